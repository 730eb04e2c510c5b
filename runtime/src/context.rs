//! What a handler can reach from inside a function process: its identity, the node's data
//! worker, and other functions.
//!
//! Invariants: nothing here is made before it is used. The data worker is connected on the
//! first [`Context::store`], and the async runtime and gRPC client behind [`Context::invoke`] on
//! the first call: a function that calls no other function runs no async machinery at all.
//! Each is made once per process and shared by every call's thread.

use std::sync::OnceLock;

use yr_proto::frame;
use yr_proto::proxy_client::ProxyClient;
use yr_proto::{ErrorKind, InvokeRequest};

/// What a handler can reach: its identity, the node's data worker, other functions.
pub struct Context {
    instance_id: String,
    function: String,
    data_socket: String,
    store: OnceLock<Result<yr_datastore::client::Client, String>>,
    proxy_address: String,
    invoker: OnceLock<Result<Invoker, String>>,
}

struct Invoker {
    rt: tokio::runtime::Runtime,
    proxy: ProxyClient<tonic::transport::Channel>,
}

impl Context {
    /// The context of instance `instance_id` serving `function`, whose node's data worker
    /// listens at `data_socket` and whose proxy takes calls at `proxy_address`.
    pub(crate) fn new(
        instance_id: String,
        function: String,
        data_socket: String,
        proxy_address: String,
    ) -> Context {
        Context {
            instance_id,
            function,
            data_socket,
            store: OnceLock::new(),
            proxy_address,
            invoker: OnceLock::new(),
        }
    }

    /// The instance this process is.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The function it serves.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// The node's data worker: `put` once, `get` zero-copy views.
    pub fn store(&self) -> Result<&yr_datastore::client::Client, String> {
        self.store
            .get_or_init(|| {
                yr_datastore::client::Client::connect_named(&self.data_socket, &self.instance_id)
                    .map_err(|e| format!("data worker at {}: {e}", self.data_socket))
            })
            .as_ref()
            .map_err(|e| e.clone())
    }

    fn invoker(&self) -> Result<&Invoker, String> {
        self.invoker
            .get_or_init(|| {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("yr-invoke")
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the invocation runtime: {e}"))?;
                // The node's credentials, which the agent named in this process's environment.
                yr_proto::tls::install_from_env()?;
                let endpoint = yr_proto::tls::endpoint(&self.proxy_address)?.tcp_nodelay(true);
                // Connects on first use, inside the runtime.
                let channel = {
                    let _in_rt = rt.enter();
                    endpoint.connect_lazy()
                };
                let proxy = ProxyClient::new(channel)
                    .max_decoding_message_size(frame::MAX_PAYLOAD + (1 << 20))
                    .max_encoding_message_size(frame::MAX_PAYLOAD + (1 << 20));
                Ok(Invoker { rt, proxy })
            })
            .as_ref()
            .map_err(|e| e.clone())
    }

    /// Calls another function (any instance) and waits for its reply (the same type as a
    /// handler's result, so a handler can return it as it is).
    pub fn invoke(&self, function: &str, payload: &[u8]) -> Result<Vec<u8>, String> {
        let invoker = self.invoker()?;
        let mut proxy = invoker.proxy.clone();
        let req = InvokeRequest {
            function: function.to_string(),
            payload: prost::bytes::Bytes::copy_from_slice(payload),
            ..Default::default()
        };
        let r = invoker
            .rt
            .block_on(proxy.invoke(req))
            .map_err(|e| format!("invoke {function}: {}", e.message()))?
            .into_inner();
        match ErrorKind::try_from(r.error_kind) {
            Ok(ErrorKind::ErrorNone) => Ok(r.payload),
            _ => Err(r.error),
        }
    }
}
