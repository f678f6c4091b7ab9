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
        (Method::PUT, "/v1/node"),
        (Method::GET, "/v1/nothing-here"),
        (Method::GET, "/"),
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
    let reply = f
        .call(
            Method::POST,
            "/v1/deployments",
            vec![b' '; MAX_REQUEST_BYTES + 1],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let error = reply.error().error;
    assert!(error.contains(&MAX_REQUEST_BYTES.to_string()), "{error}");
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
