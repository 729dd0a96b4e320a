//! One endpoint change applied to straitd's config store, over the scale harness's mesh
//! (`strait_scale::mesh`, 1,000 services in 20 namespaces with 10 endpoints each by default):
//! as `POST /apply` did it before (`before`: the whole union validated by `Model::build_with`
//! and every object copied into the published list) and as the store does it now (`now`:
//! `ConfigStore::apply`), one after the other in the same run, with the parts each is made of.
//!
//! ```sh
//! cargo bench -p strait-scale --bench apply
//! cargo bench -p strait-scale --bench apply -- --services 1000 --endpoints 10 --iterations 50
//! # instructions rather than time: one side alone, under callgrind
//! valgrind --tool=callgrind target/release/deps/apply-HASH --only now --iterations 20
//! ```
//!
//! `before` is the old `ConfigStore::apply_batch` written out here (`old`): the store's
//! `union` of the layers, `Model::build_with` over it, and `sorted`, which cloned every object.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use strait_control_plane::store::ConfigStore;
use strait_model::{Change, Model, Object, ObjectId, loader};
use strait_scale::mesh::Mesh;

struct Args {
    services: usize,
    endpoints: usize,
    iterations: usize,
    only: Option<String>,
}

fn args() -> Args {
    let mut args = Args {
        services: 1000,
        endpoints: 10,
        iterations: 40,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_default();
        match flag.as_str() {
            "--services" => args.services = value().parse().unwrap_or(args.services),
            "--endpoints" => args.endpoints = value().parse().unwrap_or(args.endpoints),
            "--iterations" => args.iterations = value().parse().unwrap_or(args.iterations),
            "--only" => args.only = Some(value()),
            // `cargo bench` passes `--bench`.
            _ => {}
        }
    }
    args
}

/// The store's apply before objects were shared and changes derived (straitd at eb99f93).
mod old {
    use super::*;
    use std::collections::BTreeSet;

    pub struct Store {
        pub files: Vec<Object>,
        pub api: BTreeMap<ObjectId, Object>,
        pub published: Arc<(Model, Vec<Object>)>,
    }

    fn union<'a>(
        files: &'a [Object],
        kube: &'a BTreeMap<ObjectId, Object>,
        api: &'a BTreeMap<ObjectId, Object>,
        batch: &'a [Object],
    ) -> Vec<&'a Object> {
        let in_batch: BTreeSet<&ObjectId> = batch.iter().map(|o| &o.id).collect();
        let above_kube = |id: &ObjectId| api.contains_key(id) || in_batch.contains(id);
        files
            .iter()
            .filter(|o| !kube.contains_key(&o.id) && !above_kube(&o.id))
            .chain(kube.values().filter(|o| !above_kube(&o.id)))
            .chain(api.values().filter(|o| !in_batch.contains(&o.id)))
            .chain(batch)
            .collect()
    }

    pub fn sorted(objects: Vec<&Object>) -> Vec<Object> {
        let mut objects: Vec<Object> = objects.into_iter().cloned().collect();
        objects.sort_by(|a, b| a.id.cmp(&b.id));
        objects
    }

    impl Store {
        pub fn new(files: Vec<Object>) -> Store {
            let model = Model::build(&files).expect("the mesh is valid");
            let objects = sorted(files.iter().collect());
            Store {
                files,
                api: BTreeMap::new(),
                published: Arc::new((model, objects)),
            }
        }

        pub fn apply(&mut self, objects: Vec<Object>) {
            let kube = BTreeMap::new();
            let mut changed = Vec::new();
            for object in &objects {
                let current = self
                    .api
                    .get(&object.id)
                    .or_else(|| kube.get(&object.id))
                    .or_else(|| self.files.iter().find(|f| f.id == object.id));
                if current.is_none_or(|c| c.raw != object.raw) {
                    changed.push(object.clone());
                }
            }
            let model = Model::build_with(union(&self.files, &kube, &self.api, &objects), None)
                .expect("the change is valid");
            for object in changed {
                self.api.insert(object.id.clone(), object);
            }
            let accepted = sorted(union(&self.files, &kube, &self.api, &[]));
            self.published = Arc::new((model, accepted));
        }
    }
}

/// Microseconds per run: median, mean, p90.
fn summary(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let n = samples.len().max(1);
    let at = |p: f64| samples.get(((n - 1) as f64 * p).round() as usize).copied();
    let mean = samples.iter().sum::<f64>() / n as f64;
    (at(0.5).unwrap_or(0.0), mean, at(0.9).unwrap_or(0.0))
}

fn time(samples: &mut Vec<f64>, f: impl FnOnce()) {
    let t = Instant::now();
    f();
    samples.push(t.elapsed().as_secs_f64() * 1e6);
}

fn main() {
    let args = args();
    let mut mesh = Mesh::generate(args.services, 20, args.endpoints, 0.2, 2);
    let mut objects: Vec<Object> = Vec::new();
    for (name, text) in mesh.files() {
        objects.extend(loader::parse(&text, &name).expect("the generated mesh parses"));
    }
    let run = |side: &str| args.only.as_deref().is_none_or(|o| o == side);
    let n = mesh.services.len();
    // The changes, as the churn scenario makes them: endpoint 0 of one service moves.
    let mut changes: Vec<Object> = Vec::new();
    for k in 0..args.iterations {
        let s = &mut mesh.services[(n / 3 + k * 7) % n];
        s.moves += 1;
        let mut parsed = loader::parse(&s.service_entry(), "admin API").expect("the change parses");
        changes.push(parsed.remove(0));
    }
    println!(
        "one endpoint change applied, {} services x {} endpoints ({} objects), {} runs each",
        n,
        args.endpoints,
        objects.len(),
        args.iterations
    );

    let mut rows: Vec<(&str, (f64, f64, f64))> = Vec::new();
    if run("before") {
        let mut store = old::Store::new(objects.clone());
        let mut samples = Vec::new();
        for change in &changes {
            let change = change.clone();
            time(&mut samples, || store.apply(vec![change]));
        }
        rows.push(("before: POST /apply's store work", summary(&mut samples)));
    }
    if run("now") {
        let store = ConfigStore::new(&mut prometheus_client::registry::Registry::default());
        store
            .replace_files(objects.clone())
            .expect("the mesh is valid");
        let mut samples = Vec::new();
        for change in &changes {
            let change = change.clone();
            time(&mut samples, || {
                store.apply(vec![change]).expect("the change is valid");
            });
        }
        rows.push(("now: POST /apply's store work", summary(&mut samples)));
    }
    if args.only.is_none() {
        // The parts: what each lever takes away.
        let model = Model::build(&objects).expect("valid");
        let mut build = Vec::new();
        let mut copy = Vec::new();
        let mut share = Vec::new();
        let mut clone = Vec::new();
        let mut derive = Vec::new();
        let mut parse = Vec::new();
        let shared: Vec<Arc<Object>> = objects.iter().cloned().map(Arc::new).collect();
        for change in changes.iter().take(args.iterations.min(20)) {
            time(&mut build, || {
                Model::build(&objects).expect("valid");
            });
            time(&mut copy, || {
                old::sorted(objects.iter().collect());
            });
            time(&mut share, || {
                let mut v: Vec<Arc<Object>> = shared.to_vec();
                v.sort_by(|a, b| a.id.cmp(&b.id));
            });
            time(&mut clone, || {
                let _ = model.clone();
            });
            let before = objects.iter().find(|o| o.id == change.id);
            time(&mut derive, || {
                let change = Change {
                    before,
                    after: Some(change),
                };
                Model::derive(&model, &[change], None).expect("an endpoint change is derived");
            });
            let s = mesh
                .services
                .iter()
                .find(|s| s.name == change.id.name)
                .expect("the service");
            let yaml = s.service_entry();
            time(&mut parse, || {
                loader::parse(&yaml, "admin API").expect("parses");
            });
        }
        rows.push(("  Model::build_with of every object", summary(&mut build)));
        rows.push(("  every object cloned (sorted)", summary(&mut copy)));
        rows.push(("  every object's Arc copied (sorted)", summary(&mut share)));
        rows.push(("  Model::derive of the change", summary(&mut derive)));
        rows.push(("    of which the model's clone", summary(&mut clone)));
        rows.push(("  (the admin API's parse of the body)", summary(&mut parse)));
    }
    println!(
        "{:<42} {:>12} {:>12} {:>12}",
        "", "median µs", "mean µs", "p90 µs"
    );
    for (name, (median, mean, p90)) in &rows {
        println!("{name:<42} {median:>12.1} {mean:>12.1} {p90:>12.1}");
    }
    if let (Some(b), Some(a)) = (
        rows.iter().find(|r| r.0.starts_with("before")),
        rows.iter().find(|r| r.0.starts_with("now")),
    ) {
        println!(
            "now / before: median {:.4}, mean {:.4}",
            a.1.0 / b.1.0.max(f64::MIN_POSITIVE),
            a.1.1 / b.1.1.max(f64::MIN_POSITIVE)
        );
    }
}
