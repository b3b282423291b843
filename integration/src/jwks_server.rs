//! A JWKS endpoint tests control, on 127.0.0.1: what it serves, an outage
//! switch (`serve(503, ..)`), and a restart (`stop` then `start_again` on
//! the same port). A mesh reaches it through a `ServiceEntry` with a static
//! endpoint ([`JwksServer::service_entry`]).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The host and cluster the authz filter fetches from (`jwks_uri`, `jwks_cluster`).
pub const HOST: &str = "jwks.auth.svc.cluster.local";
pub const URI: &str = "http://jwks.auth.svc.cluster.local:8080/jwks.json";
pub const CLUSTER: &str = "outbound|8080||jwks.auth.svc.cluster.local";

pub struct JwksServer {
    pub port: u16,
    state: Arc<Mutex<(u16, String)>>,
    running: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl JwksServer {
    pub fn start(jwks: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a JWKS port");
        let port = listener.local_addr().expect("JWKS port").port();
        let mut server = Self {
            port,
            state: Arc::new(Mutex::new((200, jwks.to_owned()))),
            running: None,
        };
        server.run(listener);
        server
    }

    /// What every later request gets.
    pub fn serve(&self, status: u16, jwks: &str) {
        *self.state.lock().expect("JWKS state") = (status, jwks.to_owned());
    }

    /// Closes the port: fetches fail with a connection error until
    /// [`Self::start_again`].
    pub fn stop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }

    /// Listens on the same port again, serving what it served before.
    pub fn start_again(&mut self) {
        self.stop();
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("rebind the JWKS port");
        self.run(listener);
    }

    /// The ServiceEntry that gives the mesh the cluster [`CLUSTER`].
    pub fn service_entry(&self) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: jwks, namespace: istio-system}}\n\
             spec:\n  hosts: [{HOST}]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  \
             ports: [{{number: 8080, name: http, protocol: HTTP}}]\n  \
             endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]\n",
            self.port
        )
    }

    fn run(&mut self, listener: TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("non-blocking JWKS port");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let serving = Arc::clone(&self.state);
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let (status, body) = serving.lock().expect("JWKS state").clone();
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes());
            }
        });
        self.running = Some((stop, thread));
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop();
    }
}
