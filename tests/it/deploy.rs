//! The deployment files in `deploy/` stay true to the service: the Envoy
//! front proxy is checked against Envoy's own API (the data-plane-api protos
//! shipped in the envoy-types crate, compiled here with protox: every field
//! name, type, enum value and `@type` must exist) and must point the
//! ext_authz filter at the service's port, with the Authorization service's
//! health name and only `context_extensions` keys the service reads; the
//! Istio files must agree with each other and with the port.

use std::path::{Path, PathBuf};
use std::process::Command;

use clerk_introspect::service::AuthzService;
use clerk_introspect::service::ext_authz::source::EXTENSION_KEYS;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use prost_reflect::{DeserializeOptions, DynamicMessage};
use serde_json::{Map, Value};
use tonic::server::NamedService;
use yaml_rust2::{Yaml, YamlLoader};

const EXT_AUTHZ_FILTER: &str = "envoy.filters.http.ext_authz";
const EXT_AUTHZ_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const PER_ROUTE_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every document of a YAML file, as JSON (the form Envoy maps onto protos).
fn load_yaml(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"));
    docs.iter().map(|d| to_json(d, path)).collect()
}

fn to_json(y: &Yaml, path: &str) -> Value {
    match y {
        Yaml::Real(r) => Value::from(r.parse::<f64>().unwrap_or_else(|_| panic!("{path}: bad number {r}"))),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::from(s.as_str()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(|v| to_json(v, path)).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let Yaml::String(k) = k else { panic!("{path}: non-string key {k:?}") };
                    (k.clone(), to_json(v, path))
                })
                .collect::<Map<_, _>>(),
        ),
        Yaml::Null => Value::Null,
        Yaml::Alias(_) | Yaml::BadValue => panic!("{path}: unsupported YAML node {y:?}"),
    }
}

/// The default `--listen` port of `serve`.
fn service_port() -> u64 {
    let args = clerk_introspect::cli::serve::parse(["--issuer", "https://clerk.example.com"]).unwrap();
    u64::from(args.loader().load().unwrap().listen.port())
}

/// Every value under `key`, anywhere in `v`.
fn find_all<'a>(v: &'a Value, key: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if k == key {
                    out.push(child);
                }
                find_all(child, key, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| find_all(c, key, out)),
        _ => {}
    }
}

fn all<'a>(v: &'a Value, key: &str) -> Vec<&'a Value> {
    let mut out = Vec::new();
    find_all(v, key, &mut out);
    out
}

/// The `proto/` directory of the envoy-types crate this project builds with.
///
/// Resolved for the platform being built only (`--filter-platform`): an
/// offline `cargo metadata` over the whole graph needs the packages of every
/// platform in `Cargo.lock`, which a fresh `~/.cargo` that only ran
/// `cargo build` or `cargo test` does not have.
fn envoy_types_protos() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--locked", "--filter-platform"])
        .arg(env!("INTROSPECT_BUILD_TARGET"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let package = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .expect("envoy-types is a dependency");
    Path::new(package["manifest_path"].as_str().unwrap()).parent().unwrap().join("proto")
}

/// Envoy's bootstrap and the extensions envoy.yaml uses, as a descriptor pool.
fn envoy_api() -> prost_reflect::DescriptorPool {
    let root = envoy_types_protos();
    let includes: Vec<PathBuf> = ["data-plane-api", "xds", "protoc-gen-validate", "googleapis", "cel-spec/proto"]
        .iter()
        .map(|d| root.join(d))
        .filter(|d| d.is_dir())
        .collect();
    let mut compiler = protox::Compiler::new(includes).expect("protox over envoy-types' protos");
    compiler
        .open_files([
            "envoy/config/bootstrap/v3/bootstrap.proto",
            "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
            "envoy/extensions/filters/http/ext_authz/v3/ext_authz.proto",
            "envoy/extensions/filters/http/router/v3/router.proto",
            "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
        ])
        .unwrap_or_else(|e| panic!("compiling Envoy's protos: {e:?}"));
    compiler.descriptor_pool()
}

/// Decodes `config` as an Envoy `Bootstrap` exactly as Envoy reads YAML
/// (proto3 JSON mapping, unknown fields refused, `@type` resolved).
fn as_bootstrap(pool: &prost_reflect::DescriptorPool, config: &Value) -> Result<DynamicMessage, String> {
    let bootstrap = pool.get_message_by_name("envoy.config.bootstrap.v3.Bootstrap").unwrap();
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    DynamicMessage::deserialize_with_options(bootstrap, config.clone(), &options).map_err(|e| e.to_string())
}

#[test]
fn envoy_config_points_ext_authz_at_the_service() {
    let docs = load_yaml("deploy/envoy/envoy.yaml");
    assert_eq!(docs.len(), 1);
    let config = &docs[0];

    // The ext_authz HTTP filter, gRPC, v3, 200 ms, fail closed.
    let filters: Vec<&Value> = all(config, "http_filters").into_iter().flat_map(|f| f.as_array().unwrap()).collect();
    let ext_authz: Vec<&&Value> = filters.iter().filter(|f| f["name"] == EXT_AUTHZ_FILTER).collect();
    assert_eq!(ext_authz.len(), 1, "one {EXT_AUTHZ_FILTER} filter");
    let authz = &ext_authz[0]["typed_config"];
    assert_eq!(authz["@type"], EXT_AUTHZ_TYPE);
    assert_eq!(authz["transport_api_version"], "V3");
    assert_eq!(authz["grpc_service"]["timeout"], "0.2s");
    assert_eq!(authz["failure_mode_allow"], false);
    assert_eq!(authz["status_on_error"]["code"], "ServiceUnavailable");
    assert_eq!(filters.last().unwrap()["name"], "envoy.filters.http.router", "the router comes last");
    let position = |name: &str| filters.iter().position(|f| f["name"] == name).unwrap();
    assert!(position(EXT_AUTHZ_FILTER) < position("envoy.filters.http.router"));

    // Its cluster: HTTP/2, the service's port, health-checked under the
    // Authorization service's name.
    let cluster_name = authz["grpc_service"]["envoy_grpc"]["cluster_name"].as_str().unwrap();
    let clusters = config["static_resources"]["clusters"].as_array().unwrap();
    let cluster = clusters.iter().find(|c| c["name"] == cluster_name).expect("the ext_authz cluster exists");
    let ports: Vec<u64> = all(cluster, "port_value").iter().filter_map(|p| p.as_u64()).collect();
    assert_eq!(ports, vec![service_port()], "the ext_authz cluster targets the service's port");
    assert_eq!(all(cluster, "http2_protocol_options").len(), 1, "gRPC needs HTTP/2");
    let service = <AuthorizationServer<AuthzService> as NamedService>::NAME;
    assert_eq!(service, "envoy.service.auth.v3.Authorization");
    let health = &cluster["health_checks"][0]["grpc_health_check"]["service_name"];
    assert_eq!(health, service, "health-checked under the Authorization service's name");

    // The upstream exists, and routes send traffic to it.
    let routes = all(config, "cluster");
    assert!(!routes.is_empty() && routes.iter().all(|c| clusters.iter().any(|k| &k["name"] == *c)));
    assert!(routes.iter().all(|c| *c != cluster_name), "no route goes to the authorization service");

    // Per-route narrowing uses only keys the service reads.
    let per_route: Vec<&Value> =
        all(config, EXT_AUTHZ_FILTER).into_iter().filter(|v| v["@type"] == PER_ROUTE_TYPE).collect();
    assert!(per_route.len() >= 2, "a disabled route and a narrowed route");
    let extensions = all(config, "context_extensions");
    assert!(!extensions.is_empty(), "an example of context_extensions");
    for ext in extensions {
        for key in ext.as_object().unwrap().keys() {
            assert!(EXTENSION_KEYS.contains(&key.as_str()), "context_extensions key {key} is not read by the service");
        }
    }
}

#[test]
fn envoy_config_matches_envoys_api() {
    let pool = envoy_api();
    let config = load_yaml("deploy/envoy/envoy.yaml").remove(0);
    let bootstrap = as_bootstrap(&pool, &config).unwrap_or_else(|e| panic!("envoy.yaml is not a valid Bootstrap: {e}"));
    assert!(bootstrap.has_field_by_name("static_resources"));

    // The check can fail: a misspelt field, a wrong type, an unknown enum
    // value and an unknown @type are each refused.
    let mut typo = config.clone();
    let authz = &mut typo["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        [0]["typed_config"];
    let failure = authz.as_object_mut().unwrap().remove("failure_mode_allow").unwrap();
    authz["failure_mode_alow"] = failure;
    assert!(as_bootstrap(&pool, &typo).is_err(), "a misspelt field is refused");
    let mut wrong = config.clone();
    wrong["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"]["port_value"] = Value::from("fifty");
    assert!(as_bootstrap(&pool, &wrong).is_err(), "a wrong type is refused");
    let mut version = config.clone();
    version["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
        ["typed_config"]["transport_api_version"] = Value::from("V4");
    assert!(as_bootstrap(&pool, &version).is_err(), "an unknown enum value is refused");
    let mut any = config;
    any["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]
        ["@type"] = Value::from("type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.Nope");
    assert!(as_bootstrap(&pool, &any).is_err(), "an unknown @type is refused");
}

#[test]
fn istio_files_agree() {
    let mesh = load_yaml("deploy/istio/mesh-config.yaml").remove(0);
    let policy = load_yaml("deploy/istio/authorization-policy.yaml").remove(0);
    let providers = mesh["spec"]["meshConfig"]["extensionProviders"].as_array().unwrap();
    assert_eq!(policy["apiVersion"], "security.istio.io/v1");
    assert_eq!(policy["kind"], "AuthorizationPolicy");
    assert_eq!(policy["spec"]["action"], "CUSTOM");
    let name = &policy["spec"]["provider"]["name"];
    let provider = providers.iter().find(|p| &p["name"] == name).expect("the policy's provider is defined");
    let grpc = &provider["envoyExtAuthzGrpc"];
    assert!(grpc.is_object(), "a gRPC ext_authz provider");
    assert_eq!(grpc["port"].as_u64(), Some(service_port()));
    assert!(grpc["service"].as_str().unwrap().ends_with(".svc.cluster.local"));
    assert_eq!(grpc["timeout"], "0.2s");
    assert_eq!(grpc["failOpen"], false);
    assert_eq!(grpc["statusOnError"], "503");
}
