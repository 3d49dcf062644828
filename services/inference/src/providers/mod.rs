//! Provider adapters: one file per provider kind, a closed enum over them, and one trait for
//! their shape. Adding a provider is one file, one enum arm and one config `kind`.
//!
//! Adapters speak in `tollgate.v1` messages: a [`ChatRequest`] plus its resolved [`Target`] in,
//! a [`ChatResponse`] or a stream of [`ChatChunk`]s (usage normalised, possibly attached to any
//! chunk) out. Deadlines, ids, settlement and client-facing usage chunks are the service's job.

mod anthropic;
mod deepseek;
mod gemini;
mod http;
mod minimax;
mod openai;
mod openai_compatible;
mod openai_wire;
mod think_tags;

use std::{collections::HashMap, pin::Pin, sync::Arc};

use futures::Stream;
use tollgate::v1::{ChatChunk, ChatRequest, ChatResponse, ResolvedModel};

use http::Upstream;
use openai_wire::{OpenAiFamily, OpenAiWire};

use crate::{
    UpstreamError,
    config::{ProviderConfig, ProviderKind, Timeouts},
    images::{ImageFetcher, ImagesConfig},
};

/// Why a provider's HTTP client could not be built.
pub type BuildError = reqwest::Error;

/// Upstream chunks, already converted; ends after the upstream's last event.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<ChatChunk, UpstreamError>> + Send>>;

/// Where and how one request goes upstream.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub route: &'a ResolvedModel,
    /// Thinking forced on or off (by the alias or the request); `None` leaves the upstream default.
    pub thinking: Option<bool>,
}

/// What every provider adapter does.
pub trait ChatProvider {
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

    /// Refuses at once when the provider cannot be called (its key is not configured), so such a
    /// request is never admitted nor counted.
    pub fn ready(&self) -> Result<(), UpstreamError> {
        self.upstream().ready()
    }

    pub fn timeouts(&self) -> Timeouts {
        self.upstream().timeouts()
    }

    /// The HTTP side of whichever provider this is.
    fn upstream(&self) -> &Upstream {
        match self {
            Self::Openai(p) => &p.wire.upstream,
            Self::Deepseek(p) => &p.wire.upstream,
            Self::OpenaiCompatible(p) => &p.wire.upstream,
            Self::Minimax(p) => &p.wire.upstream,
            Self::Anthropic(p) => &p.upstream,
            Self::Gemini(p) => &p.upstream,
        }
    }

    pub async fn chat(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Result<ChatResponse, UpstreamError> {
        match self {
            Self::Openai(p) => p.chat(request, target).await,
            Self::Deepseek(p) => p.chat(request, target).await,
            Self::OpenaiCompatible(p) => p.chat(request, target).await,
            Self::Anthropic(p) => p.chat(request, target).await,
            Self::Gemini(p) => p.chat(request, target).await,
            Self::Minimax(p) => p.chat(request, target).await,
        }
    }

    pub async fn chat_stream(
        &self,
        request: &ChatRequest,
        target: &Target<'_>,
    ) -> Result<ChunkStream, UpstreamError> {
        match self {
            Self::Openai(p) => p.chat_stream(request, target).await,
            Self::Deepseek(p) => p.chat_stream(request, target).await,
            Self::OpenaiCompatible(p) => p.chat_stream(request, target).await,
            Self::Anthropic(p) => p.chat_stream(request, target).await,
            Self::Gemini(p) => p.chat_stream(request, target).await,
            Self::Minimax(p) => p.chat_stream(request, target).await,
        }
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
        configs
            .iter()
            .map(|c| Ok((c.name.clone(), Arc::new(Provider::new(c, &images, env)?))))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.0.get(name)
    }
}
