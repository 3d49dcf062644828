//! `tollgate.v1.Catalog` over the validated [`Catalog`]. The catalogue is public (prices are
//! public information), so no call needs an API key.

use std::sync::Arc;

use tollgate::{
    error::{ApiError, ErrorKind},
    v1::{
        GetModelRequest, ListModelsRequest, ListModelsResponse, Model, ResolveModelRequest,
        ResolvedModel, catalog_server,
    },
};
use tonic::{Request, Response, Status};

use crate::Catalog;

#[derive(Debug, Clone)]
pub struct CatalogService {
    catalog: Arc<Catalog>,
}

impl CatalogService {
    pub fn new(catalog: Catalog) -> Self {
        Self {
            catalog: Arc::new(catalog),
        }
    }

    fn not_found(id: &str) -> Status {
        ApiError::new(
            ErrorKind::NotFound,
            format!("The model `{id}` does not exist"),
        )
        .with_param("model")
        .with_code("model_not_found")
        .into_status()
    }
}

#[tonic::async_trait]
impl catalog_server::Catalog for CatalogService {
    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        Ok(Response::new(ListModelsResponse {
            models: self.catalog.models().cloned().collect(),
        }))
    }

    async fn get_model(
        &self,
        request: Request<GetModelRequest>,
    ) -> Result<Response<Model>, Status> {
        let id = &request.get_ref().id;
        self.catalog
            .model(id)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Self::not_found(id))
    }

    async fn resolve_model(
        &self,
        request: Request<ResolveModelRequest>,
    ) -> Result<Response<ResolvedModel>, Status> {
        let id = &request.get_ref().id;
        self.catalog
            .resolve(id)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Self::not_found(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ModelConfig, Price, ThinkingConfig};
    use tollgate::v1::{catalog_client::CatalogClient, catalog_server::CatalogServer};

    #[tokio::test]
    async fn serves_the_catalogue_over_grpc_in_process() {
        let model = ModelConfig {
            id: "m".into(),
            provider: Some("p".into()),
            upstream_model: Some("up".into()),
            owned_by: None,
            created: 7,
            context_length: 10,
            max_output_tokens: 5,
            input_price: Price(1),
            cached_input_price: None,
            output_price: Price(2),
            cache_write_price: None,
            vision: true,
            thinking: ThinkingConfig::None,
            image_tokens_max: 4_096,
            passthrough_allow: vec![],
            deployments: vec![],
            strategy: Default::default(),
            fallbacks: vec![],
            context_window_fallback: None,
        };
        let catalog = Catalog::new(&[model], &[], &["p"]).unwrap();
        let server = CatalogServer::new(CatalogService::new(catalog));
        let mut client = CatalogClient::new(tollgate::transport::in_process(server));
        let list = client
            .list_models(ListModelsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(list.models.len(), 1);
        assert_eq!(
            list.models[0].pricing.unwrap().cached_input_micros_per_mtok,
            1
        );
        let r = client
            .resolve_model(ResolveModelRequest { id: "m".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.upstream_model, "up");
        let e = client
            .get_model(GetModelRequest { id: "x".into() })
            .await
            .unwrap_err();
        assert_eq!(ApiError::from_status(&e).kind, ErrorKind::NotFound);
    }
}
