//! Golden tests: policy YAML in, xDS out, rendered as Envoy-style JSON and compared to files.
//!
//! Each case is a directory under `tests/golden/` with `config.yaml` (the objects), `node.json`
//! (node id and metadata, as `straitctl bootstrap` writes them), optionally `mesh.yaml` (Istio
//! MeshConfig), optionally `credentials/NAMESPACE/NAME/{tls.crt,tls.key,ca.crt}` (Kubernetes
//! TLS Secrets for `credentialName`), and `xds.json` (the expected output; private keys in it
//! are redacted). `UPDATE_GOLDEN=1 cargo test -p
//! strait-translate` rewrites the expectations; review the diff before committing it.

use std::path::{Path, PathBuf};

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use strait_model::{Model, ProxyNode, loader};

/// envoy-types ships the descriptor set its code was generated from; find it in cargo's sources.
fn descriptor_pool() -> DescriptorPool {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let mut found: Vec<PathBuf> = std::fs::read_dir(home.join("registry/src"))
        .expect("cargo registry sources")
        .flatten()
        .flat_map(|index| {
            std::fs::read_dir(index.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("envoy-types-0.7.")
        })
        .map(|e| e.path().join("src/generated/types.bin"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    let path = found
        .pop()
        .expect("envoy-types' descriptor set (src/generated/types.bin) in the cargo registry");
    DescriptorPool::decode(
        std::fs::read(&path)
            .expect("read descriptor set")
            .as_slice(),
    )
    .expect("decode descriptor set")
}

fn to_json<M: Message + prost::Name>(pool: &DescriptorPool, msg: &M) -> serde_json::Value {
    let desc = pool
        .get_message_by_name(&M::full_name())
        .expect("type in descriptor set");
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()).expect("round trip");
    let options = SerializeOptions::new().skip_default_fields(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("serialize")
}

fn render(pool: &DescriptorPool, out: &strait_translate::Output) -> String {
    let mut v = serde_json::json!({
        "listeners": out.listeners.iter().map(|m| to_json(pool, m)).collect::<Vec<_>>(),
        "routes": out.routes.iter().map(|m| to_json(pool, m)).collect::<Vec<_>>(),
        "clusters": out.clusters.iter().map(|m| to_json(pool, m)).collect::<Vec<_>>(),
        "endpoints": out.endpoints.iter().map(|m| to_json(pool, m)).collect::<Vec<_>>(),
    });
    if !out.secrets.is_empty() {
        let secrets = out
            .secrets
            .iter()
            .map(|m| {
                let mut s = to_json(pool, m);
                if let Some(key) = s.pointer_mut("/tlsCertificate/privateKey") {
                    *key = serde_json::json!({"inlineString": "<redacted>"});
                }
                s
            })
            .collect::<Vec<_>>();
        v["secrets"] = serde_json::Value::Array(secrets);
    }
    serde_json::to_string_pretty(&v).expect("json") + "\n"
}

fn run_case(pool: &DescriptorPool, dir: &Path) -> Result<(), String> {
    let config = std::fs::read_to_string(dir.join("config.yaml")).map_err(|e| e.to_string())?;
    let objects = loader::parse(&config, "config.yaml").map_err(|e| format!("{e:?}"))?;
    let credentials = strait_tests::golden::credentials(dir)?;
    let model = Model::build_with(&objects, credentials.as_ref()).map_err(|e| e.to_string())?;
    let node: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("node.json")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let node = ProxyNode::from_metadata(
        node["id"].as_str().unwrap_or("test"),
        node["metadata"]
            .as_object()
            .expect("node.json: metadata map"),
    )
    .map_err(|e| e.to_string())?;
    // An optional MeshConfig beside the objects.
    let settings = match std::fs::read_to_string(dir.join("mesh.yaml")) {
        Ok(text) => strait_translate::MeshSettings::from_mesh_config(
            &strait_model::mesh::MeshConfig::parse(&text, "mesh.yaml")
                .map_err(|e| e.to_string())?,
        ),
        Err(_) => strait_translate::MeshSettings::default(),
    };
    let out = strait_translate::translate_with(&model, &node, &settings);
    assert_eq!(
        out,
        strait_translate::translate_with(&model, &node, &settings),
        "translation is deterministic"
    );
    let got = render(pool, &out);
    let expected_path = dir.join("xds.json");
    strait_tests::golden::compare(&expected_path, &got)
}

#[test]
fn golden_translations() {
    let pool = descriptor_pool();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 3,
        "golden cases missing under {}",
        root.display()
    );
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| run_case(&pool, c).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
