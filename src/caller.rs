//! How one service calls another on the request path: a caller per service that holds either a
//! gRPC client over a [`GrpcTransport`] (the split deployment's network path, or a transport
//! that encodes in-process) or the other service's implementation itself, called directly
//! through its generated trait with no protobuf encoding (the monolith). The gRPC interface stays
//! the boundary either way: the same request and response messages, the same metadata
//! (authorization, request id, traceparent), the same statuses. A direct call honours the
//! request's `grpc-timeout` as tonic's server does (the handler is dropped and the call ends
//! CANCELLED "Timeout expired"; over the network the transport reports it UNAVAILABLE), and
//! dropping the caller's future cancels the handler, as a reset stream does over the network.

use std::{pin::Pin, sync::Arc, time::Duration};

use tonic::{Request, Response, Status, codegen::tokio_stream::Stream, metadata::MetadataMap};

use crate::{
    transport::GrpcTransport,
    v1::{
        Admission, AdmitRequest, AuthenticateRequest, ChatChunk, ChatRequest, ChatResponse,
        CheckKeyRequest, GetModelRequest, GetSubscriptionRequest, GetUsageRequest,
        InvalidateKeyRequest, InvalidateKeyResponse, KeyInfo, ListDeploymentHealthRequest,
        ListDeploymentHealthResponse, ListModelsRequest, ListModelsResponse, Model,
        ResolveModelRequest, ResolvedModel, SettleRequest, Settlement, Subscription, TokenCount,
        UsageReport, billing_client::BillingClient, billing_server::Billing,
        catalog_client::CatalogClient, catalog_server::Catalog, inference_client::InferenceClient,
        inference_server::Inference, metering_client::MeteringClient, metering_server::Metering,
    },
};

/// The chunks of a streamed chat answer, whichever way the call went.
pub type ChatChunks = Pin<Box<dyn Stream<Item = Result<ChatChunk, Status>> + Send + 'static>>;

/// The metadata key of a gRPC deadline.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The deadline a caller set with [`Request::set_timeout`] (its `grpc-timeout` metadata), if any.
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    metadata
        .get(GRPC_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

/// A `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Runs a direct call within the request's deadline, as tonic's server runs a handler: past it
/// the handler is dropped and the call answers CANCELLED "Timeout expired".
async fn within_deadline<T>(
    timeout: Option<Duration>,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match timeout {
        None => call.await,
        Some(timeout) => tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(Status::cancelled(tonic::TimeoutExpired(()).to_string()))),
    }
}

/// Forwards unary methods to the network client or the implementation. A network call's
/// future (tonic's encoder, the channel's) is boxed: inline it would size every caller's future
/// for the network path, which the monolith never takes, and each move of such a future (a task
/// spawned, a handler boxed) copies all of it.
macro_rules! unary {
    ($($method:ident($request:ty) -> $response:ty;)*) => {$(
        pub async fn $method(
            &mut self,
            request: Request<$request>,
        ) -> Result<Response<$response>, Status> {
            match self {
                Self::Network(client) => Box::pin(client.$method(request)).await,
                Self::Direct(service) => {
                    within_deadline(grpc_timeout(request.metadata()), service.$method(request))
                        .await
                }
            }
        }
    )*};
}

/// A caller of a service whose answers are all unary: the enum (network client or the
/// implementation), its `direct` constructor, the network one from a transport, and the methods.
macro_rules! unary_caller {
    ($(#[$doc:meta])* $name:ident($service:ident, $client:ident) {
        $($method:ident($request:ty) -> $response:ty;)*
    }) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub enum $name {
            Network($client<GrpcTransport>),
            Direct(Arc<dyn $service>),
        }

        impl $name {
            pub fn direct(service: impl $service) -> Self {
                Self::Direct(Arc::new(service))
            }

            unary! {
                $($method($request) -> $response;)*
            }
        }

        impl From<GrpcTransport> for $name {
            fn from(transport: GrpcTransport) -> Self {
                Self::Network($client::new(transport))
            }
        }
    };
}

unary_caller! {
    /// `tollgate.v1.Catalog`, over a transport or called directly.
    CatalogCaller(Catalog, CatalogClient) {
        list_models(ListModelsRequest) -> ListModelsResponse;
        get_model(GetModelRequest) -> Model;
        resolve_model(ResolveModelRequest) -> ResolvedModel;
    }
}

unary_caller! {
    /// `tollgate.v1.Metering` (Billing's internal API), over a transport or called directly.
    MeteringCaller(Metering, MeteringClient) {
        authenticate(AuthenticateRequest) -> KeyInfo;
        admit(AdmitRequest) -> Admission;
        settle(SettleRequest) -> Settlement;
        invalidate_key(InvalidateKeyRequest) -> InvalidateKeyResponse;
    }
}

unary_caller! {
    /// `tollgate.v1.Billing` (the caller's own account), over a transport or called directly.
    BillingCaller(Billing, BillingClient) {
        get_usage(GetUsageRequest) -> UsageReport;
        get_subscription(GetSubscriptionRequest) -> Subscription;
        check_key(CheckKeyRequest) -> KeyInfo;
    }
}

/// `tollgate.v1.Inference`, over a transport or called directly. Streamed answers come as
/// [`ChatChunks`] either way.
#[derive(Clone)]
pub enum InferenceCaller {
    Network(InferenceClient<GrpcTransport>),
    Direct(Arc<dyn Inference<ChatStreamStream = ChatChunks>>),
}

/// An Inference implementation whose stream type is erased to [`ChatChunks`].
struct ErasedStream<S>(S);

#[tonic::async_trait]
impl<S: Inference> Inference for ErasedStream<S> {
    type ChatStreamStream = ChatChunks;

    async fn chat(&self, request: Request<ChatRequest>) -> Result<Response<ChatResponse>, Status> {
        self.0.chat(request).await
    }

    async fn chat_stream(
        &self,
        request: Request<ChatRequest>,
    ) -> Result<Response<ChatChunks>, Status> {
        let response = self.0.chat_stream(request).await?;
        Ok(response.map(|chunks| Box::pin(chunks) as ChatChunks))
    }

    async fn count_tokens(
        &self,
        request: Request<ChatRequest>,
    ) -> Result<Response<TokenCount>, Status> {
        self.0.count_tokens(request).await
    }

    async fn list_deployment_health(
        &self,
        request: Request<ListDeploymentHealthRequest>,
    ) -> Result<Response<ListDeploymentHealthResponse>, Status> {
        self.0.list_deployment_health(request).await
    }
}

impl InferenceCaller {
    pub fn direct(service: impl Inference) -> Self {
        Self::Direct(Arc::new(ErasedStream(service)))
    }

    /// A network caller whose messages may be `max_message_bytes` long either way.
    pub fn network(transport: GrpcTransport, max_message_bytes: usize) -> Self {
        Self::Network(
            InferenceClient::new(transport)
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        )
    }

    unary! {
        chat(ChatRequest) -> ChatResponse;
        count_tokens(ChatRequest) -> TokenCount;
        list_deployment_health(ListDeploymentHealthRequest) -> ListDeploymentHealthResponse;
    }

    /// Answers once the stream is open. The deadline bounds the opening only, as tonic's server
    /// bounds the response future and not the stream's body.
    pub async fn chat_stream(
        &mut self,
        request: Request<ChatRequest>,
    ) -> Result<Response<ChatChunks>, Status> {
        match self {
            Self::Network(client) => {
                let response = Box::pin(client.chat_stream(request)).await?;
                Ok(response.map(|chunks| Box::pin(chunks) as ChatChunks))
            }
            Self::Direct(service) => {
                within_deadline(
                    grpc_timeout(request.metadata()),
                    service.chat_stream(request),
                )
                .await
            }
        }
    }
}

/// Names the variant; a direct caller's service is not `Debug`.
macro_rules! debug_caller {
    ($($name:ident),*) => {$(
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    Self::Network(client) => f
                        .debug_tuple(concat!(stringify!($name), "::Network"))
                        .field(client)
                        .finish(),
                    Self::Direct(_) => f.write_str(concat!(stringify!($name), "::Direct")),
                }
            }
        }
    )*};
}

debug_caller!(
    CatalogCaller,
    MeteringCaller,
    BillingCaller,
    InferenceCaller
);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{net::TcpListener, sync::oneshot};
    use tonic::codegen::tokio_stream::{self, StreamExt};

    use super::*;
    use crate::{
        transport,
        v1::{catalog_server::CatalogServer, inference_server::InferenceServer},
    };

    /// Echoes what it was sent, fails, or never answers, by the model id asked for.
    #[derive(Clone)]
    struct Echo {
        /// Told when a call it was running is dropped (cancelled).
        dropped: Arc<std::sync::Mutex<Option<oneshot::Sender<()>>>>,
    }

    /// Signals the test when the handler future holding it is dropped.
    struct DropSignal(Arc<std::sync::Mutex<Option<oneshot::Sender<()>>>>);

    impl Drop for DropSignal {
        fn drop(&mut self) {
            if let Some(tx) = self.0.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    }

    fn header(metadata: &MetadataMap, name: &str) -> String {
        metadata
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    #[tonic::async_trait]
    impl Catalog for Echo {
        async fn list_models(
            &self,
            _: Request<ListModelsRequest>,
        ) -> Result<Response<ListModelsResponse>, Status> {
            Ok(Response::new(ListModelsResponse::default()))
        }

        async fn get_model(&self, _: Request<GetModelRequest>) -> Result<Response<Model>, Status> {
            Err(Status::unimplemented("not here"))
        }

        async fn resolve_model(
            &self,
            request: Request<ResolveModelRequest>,
        ) -> Result<Response<ResolvedModel>, Status> {
            let metadata = request.metadata();
            match request.get_ref().id.as_str() {
                "missing" => Err(Status::not_found("no model `missing` (ünïcode)")),
                "slow" => {
                    let _signal = DropSignal(self.dropped.clone());
                    std::future::pending().await
                }
                id => {
                    let mut response = Response::new(ResolvedModel {
                        requested_id: id.to_owned(),
                        model_id: header(metadata, "authorization"),
                        provider: header(metadata, "traceparent"),
                        upstream_model: header(metadata, "grpc-timeout"),
                        ..ResolvedModel::default()
                    });
                    response
                        .metadata_mut()
                        .insert("x-request-id", "req-1".parse().unwrap());
                    Ok(response)
                }
            }
        }
    }

    #[tonic::async_trait]
    impl Inference for Echo {
        async fn chat(&self, _: Request<ChatRequest>) -> Result<Response<ChatResponse>, Status> {
            Err(Status::unimplemented("not here"))
        }

        type ChatStreamStream = ChatChunks;

        async fn chat_stream(
            &self,
            request: Request<ChatRequest>,
        ) -> Result<Response<ChatChunks>, Status> {
            if request.get_ref().model == "refused" {
                return Err(Status::permission_denied("not for you"));
            }
            let chunks = vec![
                Ok(ChatChunk {
                    id: "a".into(),
                    ..ChatChunk::default()
                }),
                Ok(ChatChunk {
                    id: "b".into(),
                    ..ChatChunk::default()
                }),
                Err(Status::unavailable("upstream lost")),
            ];
            Ok(Response::new(
                Box::pin(tokio_stream::iter(chunks)) as ChatChunks
            ))
        }

        async fn count_tokens(
            &self,
            _: Request<ChatRequest>,
        ) -> Result<Response<TokenCount>, Status> {
            Err(Status::unimplemented("not here"))
        }

        async fn list_deployment_health(
            &self,
            _: Request<ListDeploymentHealthRequest>,
        ) -> Result<Response<ListDeploymentHealthResponse>, Status> {
            Err(Status::unimplemented("not here"))
        }
    }

    /// The same service both ways: served by tonic over TCP, and called directly.
    async fn both_ways(
        echo: &Echo,
    ) -> (
        [(&'static str, CatalogCaller); 2],
        [(&'static str, InferenceCaller); 2],
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(CatalogServer::new(echo.clone()))
            .add_service(InferenceServer::new(echo.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(server);
        let transport = transport::dial(&format!("http://{addr}")).unwrap();
        (
            [
                ("network", CatalogCaller::from(transport.clone())),
                ("direct", CatalogCaller::direct(echo.clone())),
            ],
            [
                ("network", InferenceCaller::network(transport, 1 << 20)),
                ("direct", InferenceCaller::direct(echo.clone())),
            ],
        )
    }

    fn echo() -> (Echo, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (
            Echo {
                dropped: Arc::new(std::sync::Mutex::new(Some(tx))),
            },
            rx,
        )
    }

    fn resolve(id: &str) -> Request<ResolveModelRequest> {
        Request::new(ResolveModelRequest { id: id.to_owned() })
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("30S"), Some(Duration::from_secs(30)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[tokio::test]
    async fn metadata_answers_and_errors_are_the_same_both_ways() {
        let (echo, _) = echo();
        let (catalogs, _) = both_ways(&echo).await;
        for (way, mut catalog) in catalogs {
            let mut call = resolve("gpt");
            call.metadata_mut()
                .insert("authorization", "Bearer sk-x".parse().unwrap());
            call.metadata_mut()
                .insert("traceparent", "00-ab-cd-01".parse().unwrap());
            call.set_timeout(Duration::from_secs(30));
            let answered = catalog.resolve_model(call).await.unwrap();
            assert_eq!(
                header(answered.metadata(), "x-request-id"),
                "req-1",
                "{way}"
            );
            let model = answered.into_inner();
            assert_eq!(model.requested_id, "gpt", "{way}");
            assert_eq!(model.model_id, "Bearer sk-x", "{way}");
            assert_eq!(model.provider, "00-ab-cd-01", "{way}");
            assert_eq!(
                parse_grpc_timeout(&model.upstream_model),
                Some(Duration::from_secs(30)),
                "{way}"
            );

            let refused = catalog.resolve_model(resolve("missing")).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::NotFound, "{way}");
            assert_eq!(refused.message(), "no model `missing` (ünïcode)", "{way}");
        }
    }

    #[tokio::test]
    async fn a_deadline_cancels_the_handler_both_ways() {
        for way in ["network", "direct"] {
            let (echo, dropped) = echo();
            let (catalogs, _) = both_ways(&echo).await;
            let [(_, network), (_, direct)] = catalogs;
            let mut catalog = if way == "network" { network } else { direct };
            // Connected first, so the slow call surely reaches its handler.
            catalog.resolve_model(resolve("warm")).await.unwrap();
            let mut call = resolve("slow");
            call.set_timeout(Duration::from_millis(50));
            let expired =
                tokio::time::timeout(Duration::from_secs(10), catalog.resolve_model(call))
                    .await
                    .expect("the deadline must end the call")
                    .unwrap_err();
            // Tonic's channel enforces the deadline too; the network transport
            // (`transport::dial_replicas`) reports that, as every transport failure, UNAVAILABLE.
            let code = if way == "network" {
                tonic::Code::Unavailable
            } else {
                tonic::Code::Cancelled
            };
            assert_eq!(expired.code(), code, "{way}: {expired:?}");
            assert!(
                expired.message().ends_with("Timeout expired"),
                "{way}: {expired:?}"
            );
            tokio::time::timeout(Duration::from_secs(10), dropped)
                .await
                .expect("the handler must be dropped")
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_caller_that_leaves_cancels_the_handler_both_ways() {
        for way in ["network", "direct"] {
            let (echo, dropped) = echo();
            let (catalogs, _) = both_ways(&echo).await;
            let [(_, network), (_, direct)] = catalogs;
            let mut catalog = if way == "network" { network } else { direct };
            // Connected first, so the slow call surely reaches its handler.
            catalog.resolve_model(resolve("warm")).await.unwrap();
            let left = tokio::time::timeout(
                Duration::from_millis(100),
                catalog.resolve_model(resolve("slow")),
            )
            .await;
            assert!(left.is_err(), "{way}: the slow call answered");
            tokio::time::timeout(Duration::from_secs(10), dropped)
                .await
                .expect("the handler must be dropped when its caller leaves")
                .unwrap();
        }
    }

    #[tokio::test]
    async fn streams_and_their_errors_are_the_same_both_ways() {
        let (echo, _) = echo();
        let (_, inferences) = both_ways(&echo).await;
        for (way, mut inference) in inferences {
            let refused = inference
                .chat_stream(Request::new(ChatRequest {
                    model: "refused".into(),
                    ..ChatRequest::default()
                }))
                .await
                .err()
                .unwrap();
            assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{way}");

            let mut chunks = inference
                .chat_stream(Request::new(ChatRequest::default()))
                .await
                .unwrap()
                .into_inner();
            let mut seen = Vec::new();
            while let Some(item) = tokio::time::timeout(Duration::from_secs(10), chunks.next())
                .await
                .unwrap()
            {
                match item {
                    Ok(chunk) => seen.push(chunk.id),
                    Err(status) => {
                        assert_eq!(status.code(), tonic::Code::Unavailable, "{way}");
                        assert_eq!(status.message(), "upstream lost", "{way}");
                        seen.push("error".into());
                        break;
                    }
                }
            }
            assert_eq!(seen, ["a", "b", "error"], "{way}");
        }
    }
}
