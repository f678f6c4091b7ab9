//! The API over a real node (in a temporary data dir), request by request: authentication,
//! limits, malformed requests, and every endpoint with real process domains.

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use futures::StreamExt;
use sd_proto::{
    ApiError, DeployRequest, DeploymentState, DeploymentStatus, DeploymentSummary,
    MAX_REQUEST_BYTES, NodeInfo,
};
use sd_runtime::{Node, NodeConfig};
use tower::ServiceExt;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// The longest any request may take (terminate with wait included).
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

struct Fixture {
    node: Node,
    app: Router,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    fixture_with(sd_api::Extras::default()).await
}

async fn fixture_with(extras: sd_api::Extras) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Node::open(NodeConfig {
        name: "api-node".into(),
        data_dir: dir.path().to_path_buf(),
        vm_accelerator: Some(sd_runtime::Accelerator::Tcg),
        peers: None,
        test_breaks: sd_runtime::TestBreaks::default(),
    })
    .await
    .expect("node opens");
    let app = sd_api::router(node.clone(), TOKEN.into(), extras);
    Fixture {
        node,
        app,
        _dir: dir,
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "{} is not the expected JSON ({error}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn error(&self) -> ApiError {
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/json",
            "errors are JSON"
        );
        self.json()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn request(method: Method, uri: &str, authorization: Option<&str>, body: Vec<u8>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(value) = authorization {
        builder = builder.header(header::AUTHORIZATION, value);
    }
    builder.body(Body::from(body)).expect("a valid request")
}

impl Fixture {
    async fn send(&self, request: Request<Body>) -> Reply {
        // A request that never ends is a failure to see, not a test run that hangs.
        let response = tokio::time::timeout(ANSWER_WITHIN, self.app.clone().oneshot(request))
            .await
            .expect("an answer within a minute")
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the whole body");
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn call(&self, method: Method, uri: &str, body: Vec<u8>) -> Reply {
        let bearer = format!("Bearer {TOKEN}");
        self.send(request(method, uri, Some(&bearer), body)).await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, Vec::new()).await
    }

    async fn deploy(&self, name: &str, body: &str) -> Reply {
        let request = DeployRequest {
            name: name.into(),
            description: format!("#include \"prelude.sf\"\n{body}"),
            source: format!("{name}.sf"),
        };
        self.call(
            Method::POST,
            "/v1/deployments",
            serde_json::to_vec(&request).expect("JSON"),
        )
        .await
    }

    /// Polls the deployment's status (up to 20 s) until `check` passes.
    async fn wait(
        &self,
        name: &str,
        check: impl Fn(&DeploymentStatus) -> bool,
    ) -> DeploymentStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let reply = self.get(&format!("/v1/deployments/{name}")).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            let status: DeploymentStatus = reply.json();
            if check(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "timed out: {status:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until the deployment is gone (404).
    async fn wait_gone(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let reply = self.get(&format!("/v1/deployments/{name}")).await;
            if reply.status == StatusCode::NOT_FOUND {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} is still there: {}",
                reply.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const HELLO: &str = r#"sfConfig extends Compound {
  a extends ProcessDomain { command [| "/bin/sh", "-c", "echo hello; sleep 30" |]; }
}"#;

fn running(status: &DeploymentStatus) -> bool {
    status.deployment.state == DeploymentState::Running
}

/// Whether a process with this pid exists (and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = &stat[stat.rfind(')')? + 1..];
            after.split_whitespace().next().map(|s| s != "Z")
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_the_token() {
    let f = fixture().await;
    let routes = [
        (Method::GET, "/v1/node"),
        (Method::GET, "/v1/deployments"),
        (Method::POST, "/v1/deployments"),
        (Method::GET, "/v1/deployments/web"),
        (Method::DELETE, "/v1/deployments/web"),
        (Method::GET, "/v1/deployments/web/logs?path=a"),
        (Method::GET, "/v1/deployments/web/components/sfConfig:a"),
        (Method::POST, "/v1/deployments/web/reconfigure"),
        (Method::POST, "/v1/validate"),
        (Method::GET, "/v1/events"),
        (Method::GET, "/v1/events?follow=true"),
        (Method::GET, "/v1/nodes"),
        (Method::GET, "/v1/cluster"),
        (Method::GET, "/metrics"),
        (Method::PUT, "/v1/node"),
        (Method::GET, "/v1/nothing-here"),
        (Method::GET, "/index.html"),
    ];
    let wrong = format!("Bearer {}", TOKEN.replace('0', "1"));
    let short = format!("Bearer {}", &TOKEN[1..]);
    let basic = format!("Basic {TOKEN}");
    for (method, uri) in routes {
        for (authorization, says) in [
            (None, "missing `Authorization: Bearer <token>` header"),
            (Some(wrong.as_str()), "refused"),
            (Some(short.as_str()), "refused"),
            (Some(basic.as_str()), "is not `Bearer <token>`"),
        ] {
            let reply = f
                .send(request(method.clone(), uri, authorization, b"{}".to_vec()))
                .await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
            assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer");
            let error = reply.error();
            assert!(error.error.contains(says), "{method} {uri}: {error:?}");
        }
    }
    // The scheme is case-insensitive.
    let lower = format!("bearer {TOKEN}");
    let reply = f
        .send(request(Method::GET, "/v1/node", Some(&lower), Vec::new()))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_says_who_it_is() {
    let f = fixture().await;
    let reply = f.get("/v1/node").await;
    assert_eq!(reply.status, StatusCode::OK);
    let info: NodeInfo = reply.json();
    assert_eq!(info, f.node.info());
    assert_eq!(info.name, "api-node");
    assert_eq!(info.pid, std::process::id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_alone_lists_itself_and_has_no_cluster_counters() {
    let f = fixture().await;
    let reply = f.get("/v1/nodes").await;
    assert_eq!(reply.status, StatusCode::OK);
    let members: Vec<sd_proto::MemberInfo> = reply.json();
    assert_eq!(members.len(), 1, "{members:?}");
    let me = &members[0];
    assert_eq!((me.name.as_str(), me.state.as_str()), ("api-node", "alive"));
    assert!(me.is_self && me.vcpus > 0 && me.memory_mib > 0, "{me:?}");
    assert!(me.free_vcpus <= me.vcpus && me.free_memory_mib <= me.memory_mib);
    let reply = f.get("/v1/cluster").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "null");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_are_json_errors() {
    let f = fixture().await;
    let reply = f.get("/v2/deployments").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.error().error.contains("GET /v2/deployments"));
    let reply = f.get("/v1/deployments/web/nothing").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = f.call(Method::PUT, "/v1/node", Vec::new()).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(reply.error().error.contains("PUT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_400_naming_the_problem() {
    let f = fixture().await;
    let reply = f
        .call(Method::POST, "/v1/deployments", b"{\"name\": ".to_vec())
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let error = reply.error().error;
    assert!(
        error.contains("not a deploy request") && error.contains("line 1"),
        "{error}"
    );

    let reply = f
        .call(
            Method::POST,
            "/v1/deployments",
            br#"{"name": "web"}"#.to_vec(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let error = reply.error().error;
    assert!(error.contains("missing field `description`"), "{error}");

    let reply = f
        .call(
            Method::POST,
            "/v1/deployments",
            br#"{"name": 1, "description": ""}"#.to_vec(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.error().error.contains("invalid type"));

    let reply = f
        .call(Method::DELETE, "/v1/deployments/web?wait=maybe", Vec::new())
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.error().error.contains("wait"), "{}", reply.text());

    let reply = f.get("/v1/deployments/web/logs").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.error().error.contains("path"), "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413() {
    let f = fixture().await;
    for uri in [
        "/v1/deployments",
        "/v1/validate",
        "/v1/deployments/web/reconfigure",
    ] {
        let reply = f
            .call(Method::POST, uri, vec![b' '; MAX_REQUEST_BYTES + 1])
            .await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{uri}");
        let error = reply.error().error;
        assert!(error.contains(&MAX_REQUEST_BYTES.to_string()), "{error}");
    }
    // At the limit exactly, the body is read (and here found not to be JSON).
    let reply = f
        .call(
            Method::POST,
            "/v1/deployments",
            vec![b' '; MAX_REQUEST_BYTES],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_description_or_name_is_400_and_nothing_is_deployed() {
    let f = fixture().await;
    let reply = f
        .deploy(
            "broken",
            "sfConfig extends Compound {\n  a extends NoSuchThing;\n}",
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let error = reply.error();
    assert!(
        error.error.contains("the description is invalid"),
        "{error:?}"
    );
    assert!(
        error.details.iter().any(|d| d.contains("broken.sf:3:")),
        "each error names file:line:col: {error:?}"
    );

    let reply = f.deploy("-bad name", HELLO).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.error().error.contains("invalid deployment name"));

    let reply = f.get("/v1/deployments").await;
    assert_eq!(reply.json::<Vec<DeploymentSummary>>(), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_list_status_logs_and_terminate_with_wait() {
    let f = fixture().await;
    let reply = f.deploy("hello", HELLO).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let summary: DeploymentSummary = reply.json();
    assert_eq!(summary.name, "hello");
    assert_eq!(summary.source, "hello.sf");
    assert_eq!(summary.root_node, "api-node");

    let reply = f.deploy("hello", HELLO).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.error().error.contains("exists already"));

    let status = f.wait("hello", running).await;
    let a = status
        .components
        .iter()
        .find(|c| c.path == "sfConfig:a")
        .expect("component a");
    let pid = a.pid.expect("a running process domain has a pid");
    assert!(alive(pid));

    let reply = f.get("/v1/deployments").await;
    assert_eq!(reply.status, StatusCode::OK);
    let list: Vec<DeploymentSummary> = reply.json();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].state, DeploymentState::Running);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = f.get("/v1/deployments/hello/logs?path=sfConfig:a").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.headers[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        if reply.text().contains("hello") {
            break;
        }
        assert!(Instant::now() < deadline, "no hello in the log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The path may leave out `sfConfig:`.
    assert!(
        f.get("/v1/deployments/hello/logs?path=a")
            .await
            .text()
            .contains("hello")
    );
    let reply = f.get("/v1/deployments/hello/logs?path=sfConfig:nope").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.error().error.contains("no component"));
    let reply = f.get("/v1/deployments/nope/logs?path=a").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    let reply = f
        .call(
            Method::DELETE,
            "/v1/deployments/hello?wait=true",
            Vec::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let summary: DeploymentSummary = reply.json();
    assert_eq!(summary.state, DeploymentState::Terminated);
    assert!(!alive(pid), "the process is gone once terminate answered");
    assert_eq!(
        f.get("/v1/deployments/hello").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        f.get("/v1/deployments")
            .await
            .json::<Vec<DeploymentSummary>>(),
        []
    );

    let reply = f
        .call(
            Method::DELETE,
            "/v1/deployments/hello?wait=true",
            Vec::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(
        reply
            .error()
            .error
            .contains("no deployment named \"hello\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_without_wait_is_202_and_completes_in_the_background() {
    let f = fixture().await;
    assert_eq!(f.deploy("bg", HELLO).await.status, StatusCode::CREATED);
    let status = f.wait("bg", running).await;
    let pid = status.components.iter().find_map(|c| c.pid).expect("a pid");

    let reply = f
        .call(Method::DELETE, "/v1/deployments/bg", Vec::new())
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    assert_eq!(reply.json::<DeploymentSummary>().name, "bg");
    f.wait_gone("bg").await;
    assert!(!alive(pid));

    let reply = f
        .call(Method::DELETE, "/v1/deployments/bg?wait=false", Vec::new())
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_log_streams_appends_and_ends_with_the_deployment() {
    let f = fixture().await;
    let description = r#"sfConfig extends Compound {
      a extends ProcessDomain { command [| "/bin/sh", "-c", "echo one; sleep 1; echo two; sleep 30" |]; }
    }"#;
    assert_eq!(
        f.deploy("follow", description).await.status,
        StatusCode::CREATED
    );
    f.wait("follow", running).await;

    let bearer = format!("Bearer {TOKEN}");
    let response = f
        .app
        .clone()
        .oneshot(request(
            Method::GET,
            "/v1/deployments/follow/logs?path=a&follow=true",
            Some(&bearer),
            Vec::new(),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.into_body().into_data_stream();
    let mut seen = String::new();
    while !seen.contains("two") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("more of the log within 10 s")
            .expect("the stream goes on while the deployment runs")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(seen, "one\ntwo\n");

    let node = f.node.clone();
    let terminate = tokio::spawn(async move { node.terminate("follow").await });
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = stream.next().await {
            chunk.unwrap();
        }
    })
    .await;
    assert!(
        end.is_ok(),
        "the stream ends once the deployment is gone; now: {:?}",
        f.node.status("follow")
    );
    tokio::time::timeout(ANSWER_WITHIN, terminate)
        .await
        .expect("terminated within a minute")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shutting_down_refuses_deploys_with_503() {
    let f = fixture().await;
    f.node.shutdown().await;
    let reply = f.deploy("late", HELLO).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.error().error.contains("shutting down"));
}

/// One HTTP/1.1 exchange over a fresh connection; returns the whole raw response.
#[tokio::test]
async fn fault_injection_exists_only_with_a_hook_and_checks_its_settings() {
    let without = fixture().await;
    let reply = without
        .call(Method::PUT, "/v1/chaos/faults", b"{}".to_vec())
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = std::sync::Arc::clone(&seen);
    let with = fixture_with(sd_api::Extras {
        fault_hook: Some(std::sync::Arc::new(move |settings| {
            recorder.lock().unwrap().push(settings);
        })),
    })
    .await;
    let body = br#"{"gossip": {"loss": 0.25}, "quic": {"delay_ms": 30, "duplicate": 0.5}}"#;
    let reply = with
        .call(Method::PUT, "/v1/chaos/faults", body.to_vec())
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let applied = seen.lock().unwrap().clone();
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].gossip.loss, 0.25);
    assert_eq!(applied[0].quic.delay_ms, 30);
    assert_eq!(applied[0].quic.duplicate, 0.5);

    let reply = with
        .call(
            Method::PUT,
            "/v1/chaos/faults",
            br#"{"gossip": {"loss": 1.5}}"#.to_vec(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply
            .error()
            .error
            .contains("gossip: loss must be a probability"),
        "{}",
        reply.text()
    );
    let reply = with
        .call(Method::PUT, "/v1/chaos/faults", br#"{"udp": {}}"#.to_vec())
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "refused settings change nothing"
    );
    let reply = with
        .send(request(
            Method::PUT,
            "/v1/chaos/faults",
            None,
            body.to_vec(),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

async fn raw_http(address: std::net::SocketAddr, text: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connects");
    stream.write_all(text.as_bytes()).await.expect("sends");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.expect("receives");
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_over_tcp_and_its_shutdown_ends_followed_logs() {
    let f = fixture().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sd_api::serve(
        f.node.clone(),
        listener,
        TOKEN.into(),
        sd_api::Extras::default(),
        async move {
            let _ = stopped.await;
        },
    ));

    let reply = raw_http(
        address,
        format!("GET /v1/node HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"name\":\"api-node\""), "{reply}");
    let reply = raw_http(
        address,
        "GET /v1/node HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");

    assert_eq!(f.deploy("served", HELLO).await.status, StatusCode::CREATED);
    f.wait("served", running).await;
    let follower = tokio::spawn(raw_http(
        address,
        format!(
            "GET /v1/deployments/served/logs?path=a&follow=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        ),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(()).unwrap();
    let served = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns soon after the shutdown signal");
    served.unwrap().unwrap();
    let followed = follower.await.unwrap();
    assert!(followed.contains("hello"), "{followed}");
    tokio::time::timeout(ANSWER_WITHIN, f.node.terminate("served"))
        .await
        .expect("terminated within a minute")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_without_a_token_and_holds_no_data() {
    let f = fixture().await;
    for (uri, kind) in [
        ("/", "text/html"),
        ("/console.js", "text/javascript"),
        ("/console.css", "text/css"),
    ] {
        let reply = f.send(request(Method::GET, uri, None, Vec::new())).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}");
        let content_type = reply.headers[header::CONTENT_TYPE].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{uri}: {content_type}");
        let policy = reply.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(policy.contains("default-src 'self'"), "{policy}");
        assert!(!reply.text().contains(TOKEN));
        assert!(!reply.text().contains("api-node"), "{uri} holds no data");
    }
    let reply = f.send(request(Method::POST, "/", None, Vec::new())).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(reply.error().error.contains("POST"));
    let page = f
        .send(request(Method::GET, "/", None, Vec::new()))
        .await
        .text();
    assert!(page.contains("console.js") && page.contains("id=\"nodes\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_without_deploying_and_places_each_error() {
    let f = fixture().await;
    let validate = |description: &str| {
        serde_json::to_vec(&sd_proto::ValidateRequest {
            description: format!("#include \"prelude.sf\"\n{description}"),
            source: "pasted.sf".into(),
        })
        .unwrap()
    };
    let reply = f.call(Method::POST, "/v1/validate", validate(HELLO)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let validation: sd_proto::Validation = reply.json();
    assert!(validation.ok);
    assert_eq!(validation.components, 2);
    assert_eq!(
        f.get("/v1/deployments")
            .await
            .json::<Vec<DeploymentSummary>>(),
        []
    );

    // Line 3 of what is sent (after the include line): a reference to nothing.
    let broken = "sfConfig extends Compound {\n  a 1;\n  b extends NoSuchThing;\n}";
    let reply = f.call(Method::POST, "/v1/validate", validate(broken)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let error = reply.error();
    assert_eq!(error.diagnostics.len(), 1, "{error:?}");
    let at = &error.diagnostics[0];
    assert_eq!(
        (at.file.as_str(), at.line, at.column),
        ("pasted.sf", 4, 13),
        "{at:?}"
    );
    assert!(at.message.contains("NoSuchThing"), "{at:?}");
    assert!(error.details[0].contains("pasted.sf:4:13"), "{error:?}");

    // A syntax error is placed too; a deploy of it carries the same places.
    let reply = f
        .deploy("syntax", "sfConfig extends Compound {\n  a 1\n}")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let error = reply.error();
    assert_eq!(error.diagnostics[0].line, 4, "{error:?}");

    let reply = f.call(Method::POST, "/v1/validate", b"{}".to_vec()).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.error().error.contains("missing field `description`"));
}

const LIVE: &str = r#"sfConfig extends Compound {
  sfLivenessDelay 1;
  sdMaxRestarts 4;
  a extends ProcessDomain { command [| "/bin/sh", "-c", "echo hello; exec sleep 60" |]; }
}"#;

fn setting<'s>(status: &'s DeploymentStatus, path: &str, attribute: &str) -> &'s str {
    status
        .component(path)
        .and_then(|component| component.setting(attribute))
        .unwrap_or_else(|| panic!("no setting {attribute} of {path}: {status:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_and_its_live_settings_are_read_and_changed_without_a_restart() {
    let f = fixture().await;
    assert_eq!(f.deploy("live", LIVE).await.status, StatusCode::CREATED);
    let status = f.wait("live", running).await;
    let pid = status.components.iter().find_map(|c| c.pid).expect("a pid");

    let reply = f.get("/v1/deployments/live/components/sfConfig:a").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let component: sd_proto::ComponentStatus = reply.json();
    assert_eq!(component.pid, Some(pid));
    let names: Vec<&str> = component
        .settings
        .iter()
        .map(|s| s.attribute.as_str())
        .collect();
    assert_eq!(names, ["sfLivenessDelay", "sfLivenessFactor"]);
    assert_eq!(
        f.get("/v1/deployments/live/components/a").await.status,
        StatusCode::OK
    );
    let reply = f.get("/v1/deployments/live/components/sfConfig:zz").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.error().error.contains("no component"));
    assert_eq!(
        f.get("/v1/deployments/nope/components/a").await.status,
        StatusCode::NOT_FOUND
    );

    let set = |path: &str, attribute: &str, value: &str| {
        serde_json::to_vec(&sd_proto::ReconfigureRequest {
            path: path.into(),
            attribute: attribute.into(),
            value: value.into(),
        })
        .unwrap()
    };
    let uri = "/v1/deployments/live/reconfigure";
    let reply = f
        .call(Method::POST, uri, set("a", "sfLivenessDelay", "3"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let done: sd_proto::Reconfiguration = reply.json();
    assert_eq!(
        (
            done.path.as_str(),
            done.previous.as_str(),
            done.value.as_str()
        ),
        ("sfConfig:a", "1", "3")
    );
    assert_eq!(done.nodes, ["api-node"]);
    let reply = f
        .call(Method::POST, uri, set("sfConfig", "sdMaxRestarts", "9"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let status = f
        .get("/v1/deployments/live")
        .await
        .json::<DeploymentStatus>();
    assert_eq!(setting(&status, "sfConfig:a", "sfLivenessDelay"), "3");
    assert_eq!(setting(&status, "sfConfig", "sdMaxRestarts"), "9");
    assert_eq!(
        status.components[0]
            .supervision
            .as_ref()
            .unwrap()
            .max_restarts,
        9
    );
    let a = status
        .components
        .iter()
        .find(|c| c.path == "sfConfig:a")
        .unwrap();
    assert_eq!(
        (a.pid, a.restarts),
        (Some(pid), 0),
        "changed without a restart"
    );

    // Refused, and nothing changes: an invalid value, an attribute that cannot change live,
    // a value that is not one, no such component, no such deployment.
    for (body, status_code, says) in [
        (
            set("a", "sfLivenessDelay", "-1"),
            StatusCode::BAD_REQUEST,
            "sfLivenessDelay",
        ),
        (
            set("a", "command", "1"),
            StatusCode::BAD_REQUEST,
            "what can: sfLivenessDelay, sfLivenessFactor",
        ),
        (
            set("a", "sfLivenessDelay", "soon"),
            StatusCode::BAD_REQUEST,
            "not a value",
        ),
        (
            set("sfConfig", "sfLivenessDelay", "2"),
            StatusCode::BAD_REQUEST,
            "cannot change while it runs",
        ),
        (
            set("zz", "sfLivenessDelay", "2"),
            StatusCode::BAD_REQUEST,
            "no running component",
        ),
        (
            b"{\"path\": \"a\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            "missing field",
        ),
    ] {
        let reply = f.call(Method::POST, uri, body).await;
        assert_eq!(reply.status, status_code, "{}", reply.text());
        let error = reply.error().error;
        assert!(error.contains(says), "{error}");
    }
    let reply = f
        .call(
            Method::POST,
            "/v1/deployments/nope/reconfigure",
            set("a", "sfLivenessDelay", "2"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let status = f
        .get("/v1/deployments/live")
        .await
        .json::<DeploymentStatus>();
    assert_eq!(setting(&status, "sfConfig:a", "sfLivenessDelay"), "3");

    // The change is an event.
    let events: Vec<sd_proto::Event> = f.get("/v1/events").await.json();
    let change = events
        .iter()
        .find(|e| e.state == "reconfigured" && e.path == "sfConfig:a")
        .expect("a reconfigured event");
    assert_eq!(change.detail.as_deref(), Some("sfLivenessDelay: 1 -> 3"));

    // A deployment that is not running cannot be changed.
    f.call(Method::DELETE, "/v1/deployments/live?wait=true", Vec::new())
        .await;
    let reply = f
        .call(Method::POST, uri, set("a", "sfLivenessDelay", "2"))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_listed_and_followed_as_server_sent_events() {
    let f = fixture().await;
    assert_eq!(f.deploy("ev", LIVE).await.status, StatusCode::CREATED);
    let status = f.wait("ev", running).await;
    let pid = status.components.iter().find_map(|c| c.pid).expect("a pid");

    let events: Vec<sd_proto::Event> = f.get("/v1/events").await.json();
    assert!(
        events
            .iter()
            .any(|e| e.deployment == "ev" && e.path.is_empty() && e.state == "running"),
        "{events:#?}"
    );
    assert!(
        events.windows(2).all(|w| w[0].seq < w[1].seq),
        "numbered in order"
    );
    assert!(events.iter().all(|e| e.node == "api-node"));
    let last_seq = events.last().expect("events").seq;

    let bearer = format!("Bearer {TOKEN}");
    let response = f
        .app
        .clone()
        .oneshot(request(
            Method::GET,
            "/v1/events?follow=true",
            Some(&bearer),
            Vec::new(),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body().into_data_stream();
    // Killed behind the node's back: the follower hears it fail and come back.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(seen.contains("\"state\":\"failed\"") && seen.contains("\"state\":\"running\"")) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, body.next())
            .await
            .unwrap_or_else(|_| panic!("no restart heard within 20 s: {seen}"))
            .expect("the stream goes on")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: lifecycle\ndata: {"), "{seen}");
    assert!(seen.contains("\"path\":\"sfConfig:a\""), "{seen}");
    // Without `history`, only what happened after the stream began.
    for frame in seen.split("\n\n").filter(|f| !f.trim().is_empty()) {
        let data = frame.split_once("data: ").expect(frame).1;
        let event: sd_proto::Event = serde_json::from_str(data).expect(data);
        assert!(event.seq > last_seq, "{event:?} is history");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text() {
    let f = fixture().await;
    assert_eq!(f.deploy("m", LIVE).await.status, StatusCode::CREATED);
    f.wait("m", running).await;
    // A liveness check or two (sfLivenessDelay 1).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let reply = f.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = reply.text();
    for line in [
        "sd_node_info{node=\"api-node\"} 1\n",
        "sd_deployments{state=\"running\"} 1\n",
        "sd_components{state=\"running\"} 2\n",
        "sd_restarts_total 0\n",
        "# TYPE sd_liveness_round_trip_seconds histogram\n",
        "sd_vm_boot_seconds_count 0\n",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    let checks = text
        .lines()
        .find_map(|l| l.strip_prefix("sd_liveness_round_trip_seconds_count "))
        .and_then(|n| n.parse::<f64>().ok())
        .expect("a liveness count");
    assert!(checks >= 1.0, "{text}");
    // Every sample line is `name{labels} value`.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').expect(line);
        assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
    }
}
