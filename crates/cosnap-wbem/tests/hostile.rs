//! The server under abuse, end to end over loopback: floods of idle connections and wrong
//! passwords, oversized heads, refused bodies with `Expect: 100-continue`, bodies held back
//! until admission, brute force and quadratic XML. The attacker connects from 127.0.0.2,
//! the legitimate user from 127.0.0.1 (two sources on one machine). Each check is bounded
//! to a few seconds.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cosnap_cim::{
    AssocFilter, CimError, CimProvider, ClassDef, Instance, MethodOutcome, ObjectPath,
};
use cosnap_test_support::http::{basic_auth, header, parse_response_head};
use cosnap_wbem::{ServeConfig, Server, ServerLimits};

const USER: &str = "u";
const PASSWORD: &str = "p w";
/// A user who has not logged in yet when a flood starts.
const NEWCOMER: &str = "newcomer";
const NEWCOMER_PASSWORD: &str = "fresh pw";
/// Enumerating this class takes [`SLOW`]: a request that holds its concurrency permit.
const SLOW_CLASS: &str = "Msvm_ConcreteJob";
const SLOW: Duration = Duration::from_secs(2);

/// The schema and no instances; one class is slow to enumerate.
struct EmptyProvider;

impl CimProvider for EmptyProvider {
    fn get_class(&self, class_name: &str) -> Result<ClassDef, CimError> {
        cosnap_cim::schema()
            .class(class_name)
            .cloned()
            .ok_or_else(|| CimError::not_found(format!("no class {class_name}")))
    }
    fn class_names(&self) -> Vec<String> {
        cosnap_cim::schema().class_names()
    }
    fn enumerate_instances(&self, class_name: &str) -> Result<Vec<Instance>, CimError> {
        if class_name.eq_ignore_ascii_case(SLOW_CLASS) {
            std::thread::sleep(SLOW);
        }
        Ok(vec![])
    }
    fn get_instance(&self, _: &ObjectPath) -> Result<Instance, CimError> {
        Err(CimError::not_found("no instances"))
    }
    fn associators(&self, _: &ObjectPath, _: &AssocFilter) -> Result<Vec<Instance>, CimError> {
        Ok(vec![])
    }
    fn references(&self, _: &ObjectPath, _: &AssocFilter) -> Result<Vec<Instance>, CimError> {
        Ok(vec![])
    }
    fn invoke_method(
        &self,
        _: &ObjectPath,
        _: &str,
        _: Vec<(String, cosnap_cim::Value)>,
    ) -> Result<MethodOutcome, CimError> {
        Err(CimError::not_supported("no methods"))
    }
}

struct Running {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

fn start(limits: ServerLimits) -> Running {
    let dir = tempfile::tempdir().unwrap();
    cosnap_wbem::auth::add_user(dir.path(), USER, PASSWORD).unwrap();
    cosnap_wbem::auth::add_user(dir.path(), NEWCOMER, NEWCOMER_PASSWORD).unwrap();
    let config = ServeConfig {
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        https_listen: None,
        tls_files: None,
        insecure_allow_plain_http: false,
        data_dir: dir.path().to_path_buf(),
        host_name: "testhost".into(),
        limits,
    };
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = Server::bind(config, Arc::new(EmptyProvider)).await.unwrap();
            addr_tx.send(server.http_addr().unwrap()).unwrap();
            server
                .run(async move {
                    let _ = stop_rx.await;
                })
                .await;
        });
    });
    let addr = addr_rx.recv().unwrap();
    Running {
        addr,
        _dir: dir,
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

/// A connection from `source` (127.0.0.1 is the user, 127.0.0.2 the attacker).
fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        socket.connect(to).await.unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

const ENUM_NAMES: &str = r#"<?xml version="1.0" encoding="utf-8"?><CIM CIMVERSION="2.0" DTDVERSION="2.0"><MESSAGE ID="1" PROTOCOLVERSION="1.0"><SIMPLEREQ><IMETHODCALL NAME="EnumerateInstanceNames"><LOCALNAMESPACEPATH><NAMESPACE NAME="root"/><NAMESPACE NAME="virtualization"/><NAMESPACE NAME="v2"/></LOCALNAMESPACEPATH><IPARAMVALUE NAME="ClassName"><CLASSNAME NAME="@CLASS@"/></IPARAMVALUE></IMETHODCALL></SIMPLEREQ></MESSAGE></CIM>"#;

fn enum_names(class: &str) -> String {
    ENUM_NAMES.replace("@CLASS@", class)
}

/// The head of a CIM-XML request (`extra` lines end in `\r\n`).
fn head(auth: Option<&str>, length: usize, extra: &str) -> String {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    format!(
        "POST /cimom HTTP/1.1\r\nHost: x\r\nContent-Type: application/xml; charset=\"utf-8\"\r\nCIMOperation: MethodCall\r\nCIMMethod: EnumerateInstanceNames\r\nCIMObject: root/virtualization/v2\r\nContent-Length: {length}\r\n{auth}{extra}\r\n"
    )
}

/// Reads one response head: (status, lower-cased headers).
fn read_head(s: &mut TcpStream) -> (u16, Vec<(String, String)>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            other => panic!(
                "no complete answer: {other:?} after {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    let text = String::from_utf8(buf).unwrap();
    parse_response_head(&text)
}

/// Sends a whole request from `source` and reads the answer's status.
fn request(
    source: &str,
    to: SocketAddr,
    auth: Option<&str>,
    body: &str,
) -> (u16, Vec<(String, String)>) {
    let mut s = connect_from(source, to);
    let _ = s.write_all(format!("{}{body}", head(auth, body.len(), "")).as_bytes());
    read_head(&mut s)
}

/// How long a legitimate request from 127.0.0.1 takes, asserting it succeeds.
fn legitimate(to: SocketAddr, user: &str, password: &str) -> Duration {
    let t = Instant::now();
    let (status, headers) = request(
        "127.0.0.1",
        to,
        Some(&basic_auth(user, password)),
        &enum_names("Msvm_ComputerSystem"),
    );
    assert_eq!(status, 200, "{headers:?}");
    t.elapsed()
}

/// Writes `total` body bytes without blocking for long; returns how many the server took.
fn push_body(s: &mut TcpStream, total: usize, for_at_most: Duration) -> usize {
    s.set_nonblocking(true).unwrap();
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    let deadline = Instant::now() + for_at_most;
    while sent < total && Instant::now() < deadline {
        match s.write(&chunk[..chunk.len().min(total - sent)]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => break,
        }
    }
    s.set_nonblocking(false).unwrap();
    sent
}

/// Client and server ends of the flood share this process: ~1,300 descriptors, more than
/// a default soft limit of 1,024 allows.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < 4096 {
            limit.rlim_cur = limit.rlim_max.min(4096);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[test]
fn idle_connection_flood_does_not_delay_a_legitimate_request() {
    raise_descriptor_limit();
    let server = start(ServerLimits::default());
    let idle: Vec<TcpStream> = (0..640)
        .map(|_| connect_from("127.0.0.2", server.addr))
        .collect();
    let took = legitimate(server.addr, USER, PASSWORD);
    assert!(
        took < Duration::from_secs(2),
        "took {took:?} behind 640 idle connections"
    );
    drop(idle);
}

#[test]
fn connections_over_the_caps_are_refused_at_once() {
    let server = start(ServerLimits {
        max_connections: 3,
        max_connections_per_source: 2,
        ..ServerLimits::default()
    });
    let _held: Vec<TcpStream> = (0..2)
        .map(|_| connect_from("127.0.0.2", server.addr))
        .collect();
    let t = Instant::now();
    let mut third = connect_from("127.0.0.2", server.addr);
    let (status, headers) = read_head(&mut third);
    assert_eq!((status, header(&headers, "retry-after")), (503, Some("1")));
    assert!(t.elapsed() < Duration::from_secs(1));
    let _other = connect_from("127.0.0.3", server.addr);
    let mut over_total = connect_from("127.0.0.1", server.addr);
    assert_eq!(read_head(&mut over_total).0, 503);
}

#[test]
fn wrong_password_flood_does_not_lock_out_a_valid_user() {
    let server = start(ServerLimits::default());
    legitimate(server.addr, USER, PASSWORD);
    let addr = server.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..60)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, _) = request(
                        "127.0.0.2",
                        addr,
                        Some(&basic_auth(USER, "wrong")),
                        ENUM_NAMES,
                    );
                    assert!(matches!(status, 401 | 429), "{status}");
                    if status == 429 {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let verified = legitimate(addr, USER, PASSWORD);
    let newcomer = legitimate(addr, NEWCOMER, NEWCOMER_PASSWORD);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in flood {
        t.join().unwrap();
    }
    assert!(
        verified < Duration::from_secs(2),
        "verified user took {verified:?}"
    );
    assert!(
        newcomer < Duration::from_secs(2),
        "new user took {newcomer:?}"
    );
}

#[test]
fn brute_force_is_answered_429_with_retry_after() {
    let server = start(ServerLimits::default());
    let wrong = basic_auth(USER, "guess");
    let mut statuses = Vec::new();
    for _ in 0..=cosnap_wbem::throttle::FREE_FAILURES + 1 {
        let (status, headers) = request("127.0.0.2", server.addr, Some(&wrong), ENUM_NAMES);
        statuses.push((status, header(&headers, "retry-after").map(str::to_string)));
    }
    let last = statuses.pop().unwrap();
    assert!(statuses.iter().all(|(s, _)| *s == 401), "{statuses:?}");
    assert_eq!(last, (429, Some("1".to_string())));
    // Even the right password waits out the block from that source; others are not blocked.
    let (status, _) = request(
        "127.0.0.2",
        server.addr,
        Some(&basic_auth(USER, PASSWORD)),
        ENUM_NAMES,
    );
    assert_eq!(status, 429);
    legitimate(server.addr, USER, PASSWORD);
}

#[test]
fn oversized_headers_get_431() {
    let server = start(ServerLimits::default());
    for size in [20 * 1024, 100 * 1024] {
        let mut s = connect_from("127.0.0.1", server.addr);
        let filler = format!("X-Filler: {}\r\n", "a".repeat(size));
        let auth = basic_auth(USER, PASSWORD);
        let _ = s.write_all(head(Some(&auth), ENUM_NAMES.len(), &filler).as_bytes());
        let _ = s.write_all(ENUM_NAMES.as_bytes());
        assert_eq!(read_head(&mut s).0, 431, "{size} bytes of headers");
    }
}

#[test]
fn expect_continue_with_a_refused_body_gets_no_100() {
    let server = start(ServerLimits::default());
    let cases = [
        (Some(basic_auth(USER, PASSWORD)), 1usize << 30, 413),
        (None, 1000, 401),
        (Some(basic_auth(USER, "wrong")), 1000, 401),
    ];
    for (auth, length, expected) in cases {
        let mut s = connect_from("127.0.0.1", server.addr);
        let request = head(auth.as_deref(), length, "Expect: 100-continue\r\n");
        s.write_all(request.as_bytes()).unwrap();
        assert_eq!(read_head(&mut s).0, expected, "Content-Length {length}");
    }
}

#[test]
fn an_unauthenticated_body_is_never_read() {
    let server = start(ServerLimits::default());
    let length = 64 << 20;
    let mut s = connect_from("127.0.0.2", server.addr);
    s.write_all(head(None, length, "").as_bytes()).unwrap();
    let taken = push_body(&mut s, length, Duration::from_secs(2));
    assert!(
        taken < 16 << 20,
        "the server took {taken} bytes of an unauthenticated body"
    );
    assert_eq!(read_head(&mut s).0, 401);
}

#[test]
fn bodies_wait_for_the_concurrency_limit() {
    let server = start(ServerLimits {
        max_in_flight: 1,
        decode: cosnap_wbem::DecodeLimits {
            max_body: 64 << 20,
            ..Default::default()
        },
        ..ServerLimits::default()
    });
    let auth = basic_auth(USER, PASSWORD);
    let slow = std::thread::spawn({
        let (addr, auth) = (server.addr, auth.clone());
        move || request("127.0.0.1", addr, Some(&auth), &enum_names(SLOW_CLASS)).0
    });
    std::thread::sleep(Duration::from_millis(300));
    let length = 48 << 20;
    let mut s = connect_from("127.0.0.1", server.addr);
    s.write_all(head(Some(&auth), length, "").as_bytes())
        .unwrap();
    let taken = push_body(&mut s, length, Duration::from_secs(1));
    assert!(
        taken < 16 << 20,
        "the server took {taken} bytes while the only permit was held"
    );
    assert_eq!(slow.join().unwrap(), 200);
}

#[test]
fn quadratic_xml_shapes_are_answered_fast_with_an_error() {
    let server = start(ServerLimits::default());
    let attrs: String = (0..80_000).map(|i| format!(" a{i}=\"\"")).collect();
    let decls: String = (0..2_000).map(|i| format!(" xmlns:n{i}=\"u\"")).collect();
    let auth = basic_auth(USER, PASSWORD);
    for extra in [attrs, decls] {
        let body = ENUM_NAMES.replace("<IMETHODCALL ", &format!("<IMETHODCALL{extra} "));
        let t = Instant::now();
        let (status, headers) = request("127.0.0.1", server.addr, Some(&auth), &body);
        let took = t.elapsed();
        assert_eq!(
            (status, header(&headers, "cimerror")),
            (400, Some("request-not-well-formed"))
        );
        assert!(
            took < Duration::from_secs(1),
            "{} bytes took {took:?}",
            body.len()
        );
    }
}

#[test]
fn a_client_that_never_reads_is_cut_off() {
    let server = start(ServerLimits {
        write_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(server.addr).await.unwrap()
    });
    let mut reader = stream.into_std().unwrap();
    reader.set_nonblocking(false).unwrap();
    // Pipelined requests whose answers (~20 MB) overflow every socket buffer on the way.
    let body = ENUM_NAMES.replace(
        "EnumerateInstanceNames\"><LOCALNAMESPACEPATH>",
        "EnumerateClassNames\"><LOCALNAMESPACEPATH>",
    );
    let body = body.replace(
        r#"<IPARAMVALUE NAME="ClassName"><CLASSNAME NAME="@CLASS@"/></IPARAMVALUE>"#,
        r#"<IPARAMVALUE NAME="DeepInheritance"><VALUE>TRUE</VALUE></IPARAMVALUE>"#,
    );
    let one = head(Some(&basic_auth(USER, PASSWORD)), body.len(), "")
        .replace("EnumerateInstanceNames", "EnumerateClassNames")
        + &body;
    let mut writer = reader.try_clone().unwrap();
    let requests = 4000;
    std::thread::spawn(move || {
        for _ in 0..requests {
            if writer.write_all(one.as_bytes()).is_err() {
                return;
            }
        }
    });
    // Long enough for a CPU-starved server to fill every buffer and then stall for more than
    // its 1 s write timeout before this client starts reading (3 s was not, on a loaded machine).
    std::thread::sleep(Duration::from_secs(8));
    reader
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut answers = 0;
    let end = loop {
        match reader.read(&mut buf) {
            Ok(0) => break "closed",
            Ok(n) => answers += buf[..n].windows(8).filter(|w| w == b"HTTP/1.1").count(),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break "closed",
            Err(e) => {
                break if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut {
                    "still open"
                } else {
                    "error"
                };
            }
        }
    };
    assert_eq!(end, "closed", "after {answers} answers");
    assert!(answers < requests, "{answers} answers");
}
