fn main() {
    for path in std::env::args().skip(1) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        match router_rules::load_yaml(&text) {
            Ok(t) => println!("{path}: ok v{}", t.version()),
            Err(e) => print!("{}", e.render(&path)),
        }
    }
}
