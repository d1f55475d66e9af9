//! The layering rules of the workspace, checked on the dependency graph that
//! `cargo metadata` resolves: what each crate may link, so that a change
//! which breaks one fails here rather than in a review.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// The resolved graph: each package by id, its name, its links that reach
/// a build of it (normal and build dependencies; dev-dependencies link only
/// into its tests), and every dependency its manifest names.
struct Graph {
    names: HashMap<String, String>,
    links: HashMap<String, Vec<String>>,
    named: HashMap<String, Vec<String>>,
    workspace: BTreeSet<String>,
}

impl Graph {
    fn load() -> Graph {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // This machine's platform only: the packages of others (Android's,
        // Windows') are neither linked here nor downloaded.
        let output = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--offline"])
            .args(["--filter-platform", &host_triple()])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo metadata runs");
        assert!(
            output.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata is JSON");
        let names = metadata["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| {
                (
                    id_of(&p["id"]),
                    p["name"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let workspace = metadata["workspace_members"]
            .as_array()
            .expect("workspace members")
            .iter()
            .map(id_of)
            .collect();
        let mut links = HashMap::new();
        let mut named = HashMap::new();
        for node in metadata["resolve"]["nodes"]
            .as_array()
            .expect("a resolved graph")
        {
            let deps = node["deps"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let linked = deps
                .iter()
                .filter(|dep| {
                    dep["dep_kinds"]
                        .as_array()
                        .is_some_and(|kinds| kinds.iter().any(|k| k["kind"] != "dev"))
                })
                .map(|dep| id_of(&dep["pkg"]))
                .collect();
            links.insert(id_of(&node["id"]), linked);
            named.insert(
                id_of(&node["id"]),
                deps.iter().map(|dep| id_of(&dep["pkg"])).collect(),
            );
        }
        Graph {
            names,
            links,
            named,
            workspace,
        }
    }

    fn id(&self, name: &str) -> String {
        self.names
            .iter()
            .find(|(id, n)| n.as_str() == name && self.workspace.contains(*id))
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| panic!("no workspace crate named {name}"))
    }

    /// The names of every package a build of `name` links, itself excluded.
    fn closure(&self, name: &str) -> BTreeSet<String> {
        let start = self.id(name);
        let mut seen = BTreeSet::new();
        let mut stack = vec![start.clone()];
        while let Some(id) = stack.pop() {
            for dep in self.links.get(&id).map(Vec::as_slice).unwrap_or_default() {
                if seen.insert(dep.clone()) {
                    stack.push(dep.clone());
                }
            }
        }
        seen.remove(&start);
        seen.iter().map(|id| self.names[id].clone()).collect()
    }

    /// The crates `name` names in its manifest, of any kind.
    fn direct_deps(&self, name: &str) -> BTreeSet<String> {
        let id = self.id(name);
        self.named
            .get(&id)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|dep| self.names[dep].clone())
            .collect()
    }

    fn is_workspace_crate(&self, name: &str) -> bool {
        self.workspace.iter().any(|id| self.names[id] == name)
    }
}

fn host_triple() -> String {
    let output = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc names its host")
        .to_string()
}

fn id_of(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

#[test]
fn the_walk_finds_libtorch_where_it_is_linked() {
    // Guards the checks below: a graph walk that found nothing would pass them all.
    let graph = Graph::load();
    let cli = graph.closure("atelier-cli");
    assert!(cli.contains("tch") && cli.contains("torch-sys"), "{cli:?}");
    assert!(cli.contains("atelier-coordinator") && cli.contains("atelier-worker"));
}

#[test]
fn the_coordinator_links_no_libtorch() {
    let closure = Graph::load().closure("atelier-coordinator");
    for torch in ["tch", "torch-sys"] {
        assert!(
            !closure.contains(torch),
            "atelier-coordinator links {torch}; the coordinator image ships without libtorch"
        );
    }
}

#[test]
fn the_coordinator_and_the_worker_do_not_depend_on_each_other() {
    let graph = Graph::load();
    assert!(!graph
        .closure("atelier-coordinator")
        .contains("atelier-worker"));
    assert!(!graph
        .closure("atelier-worker")
        .contains("atelier-coordinator"));
}

#[test]
fn the_protocol_depends_on_no_other_workspace_crate() {
    let graph = Graph::load();
    let deps = graph.direct_deps("atelier-proto");
    let inside: Vec<&String> = deps
        .iter()
        .filter(|d| graph.is_workspace_crate(d))
        .collect();
    assert!(inside.is_empty(), "atelier-proto depends on {inside:?}");
}

#[test]
fn the_collectives_do_not_reach_the_coordinator() {
    let closure = Graph::load().closure("atelier-collective");
    assert!(
        !closure.contains("atelier-coordinator"),
        "atelier-collective links the coordinator"
    );
}

#[test]
fn the_data_and_model_crates_speak_no_grpc() {
    // Their errors say what the caller should do; the gRPC code is chosen
    // where a request is answered (the models take their option types from
    // atelier-proto, which brings tonic along, but use none of it).
    let graph = Graph::load();
    for name in ["atelier-catalog", "atelier-pipeline", "atelier-models"] {
        let deps = graph.direct_deps(name);
        for grpc in ["tonic", "prost"] {
            assert!(!deps.contains(grpc), "{name} depends on {grpc}");
        }
    }
}
