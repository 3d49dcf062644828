//! Provider adapters: one file per provider kind, a closed enum over them, and one trait for
//! their shape. Adding a provider is one file (implementing [`ChatProvider`], or [`Dialect`]
//! for an OpenAI-protocol provider), one [`Provider`] variant with its arm in [`Provider::new`],
//! in [`Provider::dispatch`] (the only `match` over providers that calls them) and in
//! [`Provider::gen_ai_system`] (its name in traces), and one config `kind`.
//!
//! Adapters speak in `tollgate.v1` messages: a [`ChatRequest`] plus its resolved [`Target`] in,
//! a [`ChatResponse`] or a stream of [`ChatChunk`]s (usage normalised, possibly attached to any
//! chunk) out. Deadlines, ids, settlement and client-facing usage chunks are the service's job.

mod anthropic;
mod deepseek;
#[cfg(test)]
mod fuzz;
mod gemini;
mod http;
mod minimax;
mod openai;
mod openai_compatible;
mod openai_wire;
mod sse;
mod think_tags;

use std::{collections::HashMap, pin::Pin, sync::Arc};

use futures::{Stream, future::BoxFuture};
use tollgate::v1::{ChatChunk, ChatRequest, ChatResponse, ResolvedModel};

use http::Upstream;
#[cfg(doc)]
use openai_wire::Dialect;
use openai_wire::{OpenAiFamily, OpenAiWire};

use crate::{
    UpstreamError,
    config::{ProviderConfig, ProviderKind, Timeouts},
    images::{ImageFetcher, ImagesConfig},
    thinking::Thinking,
};

/// Why a provider's HTTP client could not be built.
pub type BuildError = reqwest::Error;

/// Upstream chunks, already converted; ends after the upstream's last event.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<ChatChunk, UpstreamError>> + Send>>;

/// Where and how one request goes upstream.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub route: &'a ResolvedModel,
    /// Thinking as decided for this request (`thinking::decide`); adapters only render it.
    pub thinking: Thinking,
}

/// What every provider adapter does.
pub trait ChatProvider: Send + Sync {
    /// The HTTP side of this provider (key, deadlines, pooled client).
    fn upstream(&self) -> &Upstream;

    /// Refuses, before the request is admitted (and counted), what this provider is known to
    /// refuse for the routed model; cheap and without I/O. The rest is found while building the
    /// upstream body.
    fn check(&self, _request: &ChatRequest, _target: &Target<'_>) -> Result<(), UpstreamError> {
        Ok(())
    }

    fn chat(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> impl Future<Output = Result<ChatResponse, UpstreamError>> + Send;

    /// Sends the request and returns once the upstream accepted it (status checked); chunks
    /// follow on the stream.
    fn chat_stream(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> impl Future<Output = Result<ChunkStream, UpstreamError>> + Send;

    /// The provider's own count of the request's prompt tokens, where it has a count API
    /// (`None`: the caller estimates).
    fn count_tokens(
        &self,
        _request: &ChatRequest,
        _target: &Target<'_>,
    ) -> impl Future<Output = Option<Result<u64, UpstreamError>>> + Send {
        std::future::ready(None)
    }
}

/// Every provider kind this build speaks.
#[derive(Debug)]
pub enum Provider {
    Openai(OpenAiFamily<openai::OpenAi>),
    Deepseek(OpenAiFamily<deepseek::DeepSeek>),
    OpenaiCompatible(OpenAiFamily<openai_compatible::OpenAiCompatible>),
    Anthropic(anthropic::Anthropic),
    Gemini(gemini::Gemini),
    Minimax(OpenAiFamily<minimax::MiniMax>),
}

impl Provider {
    /// Builds the adapter (and its pooled HTTP client) for one configured provider. The API key
    /// is read through `env` so tests never touch the process environment; `images` fetches
    /// image URLs for providers that only take bytes.
    pub fn new(
        config: &ProviderConfig,
        images: &ImageFetcher,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, BuildError> {
        let wire = || OpenAiWire::new(config, env);
        Ok(match config.kind {
            ProviderKind::Openai => Self::Openai(OpenAiFamily::new(wire()?)),
            ProviderKind::Deepseek => Self::Deepseek(OpenAiFamily::new(wire()?)),
            ProviderKind::OpenaiCompatible => Self::OpenaiCompatible(OpenAiFamily::new(wire()?)),
            ProviderKind::Anthropic => Self::Anthropic(anthropic::Anthropic::new(config, env)?),
            ProviderKind::Gemini => Self::Gemini(gemini::Gemini::new(config, images.clone(), env)?),
            ProviderKind::Minimax => Self::Minimax(OpenAiFamily::new(wire()?)),
        })
    }

    /// Hands the adapter inside to `call`: the one place that matches over provider kinds.
    fn dispatch<'a, C: ProviderCall<'a>>(&'a self, call: C) -> C::Output {
        match self {
            Self::Openai(p) => call.call(p),
            Self::Deepseek(p) => call.call(p),
            Self::OpenaiCompatible(p) => call.call(p),
            Self::Anthropic(p) => call.call(p),
            Self::Gemini(p) => call.call(p),
            Self::Minimax(p) => call.call(p),
        }
    }

    /// The provider as the OpenTelemetry GenAI conventions name it (`gen_ai.system`): their
    /// well-known value where there is one, else the config kind.
    pub fn gen_ai_system(&self) -> &'static str {
        match self {
            Self::Openai(_) => "openai",
            Self::Deepseek(_) => "deepseek",
            Self::OpenaiCompatible(_) => "openai_compatible",
            Self::Anthropic(_) => "anthropic",
            Self::Gemini(_) => "gcp.gemini",
            Self::Minimax(_) => "minimax",
        }
    }

    /// Refuses at once when the provider cannot be called (its key is not configured), so such a
    /// request is never admitted nor counted.
    pub fn ready(&self) -> Result<(), UpstreamError> {
        self.dispatch(UpstreamOf).ready()
    }

    pub fn timeouts(&self) -> Timeouts {
        self.dispatch(UpstreamOf).timeouts()
    }

    /// [`ChatProvider::check`]: run before admission.
    pub fn check(&self, request: &ChatRequest, target: &Target<'_>) -> Result<(), UpstreamError> {
        self.dispatch(Check { request, target })
    }

    pub async fn chat(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Result<ChatResponse, UpstreamError> {
        self.dispatch(Chat { request, target }).await
    }

    /// [`ChatProvider::count_tokens`].
    pub async fn count_tokens(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Option<Result<u64, UpstreamError>> {
        self.dispatch(CountTokens { request, target }).await
    }

    pub async fn chat_stream(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Result<ChunkStream, UpstreamError> {
        self.dispatch(ChatStream { request, target }).await
    }
}

/// Something done with whichever adapter a [`Provider`] holds (see [`Provider::dispatch`]).
trait ProviderCall<'a> {
    type Output;
    fn call<P: ChatProvider>(self, provider: &'a P) -> Self::Output;
}

/// The adapter's [`Upstream`].
struct UpstreamOf;

impl<'a> ProviderCall<'a> for UpstreamOf {
    type Output = &'a Upstream;
    fn call<P: ChatProvider>(self, provider: &'a P) -> &'a Upstream {
        provider.upstream()
    }
}

/// [`ChatProvider::check`].
struct Check<'a> {
    request: &'a ChatRequest,
    target: &'a Target<'a>,
}

impl<'a> ProviderCall<'a> for Check<'a> {
    type Output = Result<(), UpstreamError>;
    fn call<P: ChatProvider>(self, provider: &'a P) -> Self::Output {
        provider.check(self.request, self.target)
    }
}

/// [`ChatProvider::chat`], boxed so that every adapter's future has one type.
struct Chat<'a> {
    request: &'a ChatRequest,
    target: &'a Target<'a>,
}

impl<'a> ProviderCall<'a> for Chat<'a> {
    type Output = BoxFuture<'a, Result<ChatResponse, UpstreamError>>;
    fn call<P: ChatProvider>(self, provider: &'a P) -> Self::Output {
        Box::pin(provider.chat(self.request, self.target))
    }
}

/// [`ChatProvider::chat_stream`], boxed likewise.
struct ChatStream<'a> {
    request: &'a ChatRequest,
    target: &'a Target<'a>,
}

impl<'a> ProviderCall<'a> for ChatStream<'a> {
    type Output = BoxFuture<'a, Result<ChunkStream, UpstreamError>>;
    fn call<P: ChatProvider>(self, provider: &'a P) -> Self::Output {
        Box::pin(provider.chat_stream(self.request, self.target))
    }
}

/// [`ChatProvider::count_tokens`], boxed likewise.
struct CountTokens<'a> {
    request: &'a ChatRequest,
    target: &'a Target<'a>,
}

impl<'a> ProviderCall<'a> for CountTokens<'a> {
    type Output = BoxFuture<'a, Option<Result<u64, UpstreamError>>>;
    fn call<P: ChatProvider>(self, provider: &'a P) -> Self::Output {
        Box::pin(provider.count_tokens(self.request, self.target))
    }
}

/// The configured providers by name.
#[derive(Debug, Clone, Default)]
pub struct Providers(HashMap<String, Arc<Provider>>);

impl Providers {
    /// `images` is the `[images]` section: how image URLs are fetched for providers that need
    /// the bytes.
    pub fn new(
        configs: &[ProviderConfig],
        images: &ImagesConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, BuildError> {
        let images = ImageFetcher::new(images);
        let providers: HashMap<_, _> = configs
            .iter()
            .map(|c| Ok((c.name.clone(), Arc::new(Provider::new(c, &images, env)?))))
            .collect::<Result<_, BuildError>>()?;
        for config in configs {
            if let Some(Err(UpstreamError::NotConfigured { provider, env })) =
                providers.get(&config.name).map(|p| p.ready())
            {
                // An operator's configuration state, said once here; its requests get a 503
                // naming the variable.
                tracing::warn!(
                    provider,
                    env,
                    "{env} is not set: the models of provider {provider} answer 503 until it is"
                );
            }
        }
        Ok(Self(providers))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.0.get(name)
    }
}
