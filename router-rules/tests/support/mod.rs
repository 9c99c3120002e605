//! Tables for tests and benchmarks.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The text of the three-region example.
pub fn three_regions_yaml() -> String {
    std::fs::read_to_string(repo_root().join("deploy/examples/three-regions.yaml"))
        .unwrap_or_default()
}

/// A valid table of `regions` regions (`r0`, `r1`, ...), `units` units splitting `slots`
/// slots evenly (unit `u{i}` in region `r{i % regions}`, `u0` the center), and `routes`
/// C-class routes `/svc{n}` over ten services, keyed by header `X-User-Id`, then cookie `uid`.
pub fn synthetic_yaml(regions: usize, units: usize, routes: usize, slots: u32) -> String {
    let mut y = String::new();
    let _ = writeln!(y, "version: 1\nslots: {{ count: {slots} }}\nregions:");
    let services = routes.clamp(1, 10);
    for r in 0..regions {
        let _ = writeln!(
            y,
            "  - name: r{r}\n    gateways: [\"127.0.0.1:{}\"]\n    pools:",
            8000 + r
        );
        for s in 0..services {
            let _ = writeln!(
                y,
                "      s{s}: [\"10.{r}.{s}.1:80\", \"10.{r}.{s}.2:80\", \"10.{r}.{s}.3:80\"]"
            );
        }
    }
    let _ = writeln!(y, "units:");
    let per_unit = slots as usize / units;
    for u in 0..units {
        let first = u * per_unit;
        let last = if u + 1 == units {
            slots as usize - 1
        } else {
            first + per_unit - 1
        };
        let _ = writeln!(
            y,
            "  - name: u{u}\n    slots: [[{first}, {last}]]\n    region: r{}{}",
            u % regions,
            if u == 0 { "\n    center: true" } else { "" }
        );
    }
    let _ = writeln!(y, "routes:");
    for n in 0..routes {
        let _ = writeln!(
            y,
            "  - name: svc{n}\n    match: {{ path_prefix: /svc{n} }}\n    service: s{}\n    class: C\n    key: [{{ header: X-User-Id }}, {{ cookie: uid }}]",
            n % services
        );
    }
    y
}
