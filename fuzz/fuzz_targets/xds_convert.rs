//! Arbitrary bytes decoded as an xDS resource (the first byte picks its type) and converted by
//! strait-proxy's xDS edge: converted or refused with an error, never a panic.

#![no_main]

use envoy_types::pb::google::protobuf::Any;
use libfuzzer_sys::fuzz_target;
use strait_proxy::config::{Cluster, Listener, RouteConfig, SdsSecret};
use strait_proxy::xds::convert::{Assignment, Resource};

fn convert<R: Resource>(value: &[u8]) {
    let any = Any {
        type_url: R::TYPE_URL.to_string(),
        value: value.to_vec(),
    };
    let _ = R::from_any(&any);
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, value)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => convert::<Listener>(value),
        1 => convert::<RouteConfig>(value),
        2 => convert::<Cluster>(value),
        3 => convert::<Assignment>(value),
        _ => convert::<SdsSecret>(value),
    }
});
