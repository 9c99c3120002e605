//! A real gRPC service (tonic) for the gRPC tests, written without a build script: the two
//! messages are prost structs by hand, and the service routes its two methods the way
//! tonic-build's generated code does. Also the client calls, over `tonic::client::Grpc`.
//!
//! `unitgate.test.Echo/Say` (unary) answers with the region that served it and the request's
//! metadata as the server saw it. `unitgate.test.Echo/Count` (server streaming) sends `count`
//! messages and ends with trailers: `grpc-status: 0` and `x-count: <count>`, or, when the
//! request says `fail`, `grpc-status: 15` (DATA_LOSS) with `x-reason: asked` after the messages.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use tonic::client::Grpc as GrpcClient;
use tonic::codegen::{BoxFuture, BoxStream, Service, http};
use tonic::metadata::MetadataMap;
use tonic::server::{Grpc, NamedService, ServerStreamingService, UnaryService};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

/// The request of both methods.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub text: String,
    /// Messages `Count` sends.
    #[prost(uint32, tag = "2")]
    pub count: u32,
    /// `Count` ends with DATA_LOSS after its messages.
    #[prost(bool, tag = "3")]
    pub fail: bool,
}

/// The reply of both methods.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub text: String,
    /// The region of the server that answered.
    #[prost(string, tag = "2")]
    pub served_by: String,
    /// The request's metadata (ASCII values) as the server received it.
    #[prost(btree_map = "string, string", tag = "3")]
    pub metadata: BTreeMap<String, String>,
    /// The message's place in a `Count` stream.
    #[prost(uint32, tag = "4")]
    pub index: u32,
}

pub const SAY: &str = "/unitgate.test.Echo/Say";
pub const COUNT: &str = "/unitgate.test.Echo/Count";

/// The service, answering as region `region`.
#[derive(Clone)]
pub struct EchoServer {
    region: String,
}

fn metadata_of(metadata: &MetadataMap) -> BTreeMap<String, String> {
    metadata
        .clone()
        .into_headers()
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
        .collect()
}

struct Say(String);

impl UnaryService<EchoRequest> for Say {
    type Response = EchoReply;
    type Future = BoxFuture<Response<EchoReply>, Status>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let region = self.0.clone();
        Box::pin(async move {
            let metadata = metadata_of(request.metadata());
            let message = request.into_inner();
            Ok(Response::new(EchoReply {
                text: message.text,
                served_by: region,
                metadata,
                index: 0,
            }))
        })
    }
}

struct Count(String);

impl ServerStreamingService<EchoRequest> for Count {
    type Response = EchoReply;
    type ResponseStream = BoxStream<EchoReply>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let region = self.0.clone();
        Box::pin(async move {
            let metadata = metadata_of(request.metadata());
            let message = request.into_inner();
            let mut items: Vec<Result<EchoReply, Status>> = (0..message.count)
                .map(|index| {
                    Ok(EchoReply {
                        text: message.text.clone(),
                        served_by: region.clone(),
                        metadata: metadata.clone(),
                        index,
                    })
                })
                .collect();
            // tonic sends a stream's closing status, with its metadata, as the trailers.
            let mut trailers = MetadataMap::new();
            let end = if message.fail {
                trailers.insert("x-reason", "asked".parse().expect("value"));
                Status::with_metadata(Code::DataLoss, "failed after the messages", trailers)
            } else {
                trailers.insert("x-count", message.count.to_string().parse().expect("value"));
                Status::with_metadata(Code::Ok, "", trailers)
            };
            items.push(Err(end));
            let stream: Self::ResponseStream = Box::pin(tonic::codegen::tokio_stream::iter(items));
            Ok(Response::new(stream))
        })
    }
}

impl<B> Service<http::Request<B>> for EchoServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let region = self.region.clone();
        Box::pin(async move {
            let mut grpc = Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
            Ok(match request.uri().path() {
                SAY => grpc.unary(Say(region), request).await,
                COUNT => grpc.server_streaming(Count(region), request).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

impl NamedService for EchoServer {
    const NAME: &'static str = "unitgate.test.Echo";
}

/// A running echo server.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stop serving and wait until the listener is closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Serve the echo service as region `region` on a port the OS picks (HTTP/2 only, as tonic
/// serves by default).
pub async fn serve(region: &str) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(EchoServer {
            region: region.to_owned(),
        })
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = stopped.await;
            },
        );
    let task = tokio::spawn(async move {
        server.await.expect("gRPC server");
    });
    Running {
        addr,
        stop: Some(stop),
        task,
    }
}

/// A gRPC client of the echo service through `addr` (a gateway): h2c, as gRPC clients speak
/// to plain-text servers.
pub async fn client(addr: SocketAddr) -> GrpcClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    GrpcClient::new(channel)
}

/// A request with `metadata`.
pub fn request(message: EchoRequest, metadata: &[(&'static str, &str)]) -> Request<EchoRequest> {
    let mut request = Request::new(message);
    for (name, value) in metadata {
        request
            .metadata_mut()
            .insert(*name, value.parse().expect("metadata value"));
    }
    request
}

/// `Say` through `client`.
pub async fn say(
    client: &mut GrpcClient<Channel>,
    request: Request<EchoRequest>,
) -> Result<Response<EchoReply>, Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    client
        .unary(
            request,
            http::uri::PathAndQuery::from_static(SAY),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
}

/// `Count` through `client`: the messages, and the stream's end (its trailers, or its status).
pub async fn count(
    client: &mut GrpcClient<Channel>,
    request: Request<EchoRequest>,
) -> Result<(Vec<EchoReply>, Result<MetadataMap, Status>), Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let response: Response<Streaming<EchoReply>> = client
        .server_streaming(
            request,
            http::uri::PathAndQuery::from_static(COUNT),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await?;
    let mut stream = response.into_inner();
    let mut messages = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(message)) => messages.push(message),
            Ok(None) => {
                let trailers = stream.trailers().await.map(Option::unwrap_or_default);
                return Ok((messages, trailers));
            }
            Err(status) => return Ok((messages, Err(status))),
        }
    }
}
