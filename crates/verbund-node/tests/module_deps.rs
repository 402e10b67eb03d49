//! The node's modules form layers, and this test fails when a forbidden dependency appears:
//! no import cycle between modules, and the lower layers (state, errors, wire conversions,
//! the enforcement point) never reach up into the APIs and sync services that use them.

use std::collections::{BTreeMap, BTreeSet};

/// `crate::<module>` references of every module (comments skipped; `pb` is the generated
/// code, not a module of ours). A module in a directory (`api/mod.rs` and everything under
/// it) counts as one.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let (name, files) = if path.is_dir() {
            (
                path.file_name().unwrap().to_string_lossy().to_string(),
                rust_files_under(&path),
            )
        } else if path.extension().is_some_and(|e| e == "rs") {
            (
                path.file_stem().unwrap().to_string_lossy().to_string(),
                vec![path.clone()],
            )
        } else {
            continue;
        };
        let deps = graph.entry(name.clone()).or_default();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                let mut rest = line;
                while let Some(i) = rest.find("crate::") {
                    rest = &rest[i + "crate::".len()..];
                    let module: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !module.is_empty() && module != name && module != "pb" {
                        deps.insert(module);
                    }
                }
            }
        }
    }
    graph
}

/// Every `.rs` file in `dir` and its subdirectories.
fn rust_files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files_under(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// A cycle through `start`, if there is one.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(graph, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn the_node_modules_have_no_import_cycle() {
    let graph = module_graph();
    assert!(graph.contains_key("api") && graph.contains_key("state"));
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn lower_layers_never_reach_into_the_services() {
    let graph = module_graph();
    let services = ["api", "sync", "server"];
    for lower in [
        "state",
        "error",
        "wire",
        "convert",
        "identity",
        "link_state",
        "pki",
        "auth",
        "consolidation",
    ] {
        let deps = &graph[lower];
        for service in services {
            assert!(
                !deps.contains(service),
                "{lower} imports {service}: the enforcement point, state and conversions must not depend on the services"
            );
        }
    }
}

/// The `[dependencies]` of a workspace crate (names only; dev-dependencies do not count).
fn dependencies_of(crate_dir: &str) -> BTreeSet<String> {
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .join(crate_dir)
        .join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut in_deps = false;
    let mut deps = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['=', '.', ' ']).next().unwrap_or("");
            deps.insert(name.to_string());
        }
    }
    deps
}

#[test]
fn crate_dependencies_point_one_way() {
    // Pure crates: no runtime, database, network or TLS.
    let io = ["tokio", "sqlx", "tonic", "rustls", "hyper", "reqwest"];
    for pure in ["verbund-core", "verbund-consolidation"] {
        let deps = dependencies_of(pure);
        for forbidden in io.iter().chain(&["verbund-store", "verbund-node"]) {
            assert!(
                !deps.contains(*forbidden),
                "{pure} depends on {forbidden}: it must stay free of I/O"
            );
        }
    }
    // The store knows nothing of gRPC; the policy nothing of the store.
    let store = dependencies_of("verbund-store");
    for forbidden in [
        "tonic",
        "prost",
        "verbund-proto",
        "verbund-node",
        "verbund-policy",
    ] {
        assert!(
            !store.contains(forbidden),
            "verbund-store depends on {forbidden}"
        );
    }
    let policy = dependencies_of("verbund-policy");
    for forbidden in ["verbund-store", "verbund-node", "sqlx", "tonic"] {
        assert!(
            !policy.contains(forbidden),
            "verbund-policy depends on {forbidden}"
        );
    }
    assert!(
        dependencies_of("verbund-core").contains("serde"),
        "the parser reads the file"
    );
}
