//! What a gRPC listener's reflection advertises: exactly the services that listener serves (the
//! Tollgate services routed on it, gRPC health, reflection itself), in both protocol versions
//! (`grpc.reflection.v1` and the `v1alpha` that grpcio-reflection and older grpcurl speak).
//! A service of the contract that the listener does not serve is cut out of the descriptors it
//! registers, so it is neither listed nor resolvable by name: the public listener never shows
//! `tollgate.v1.Metering`, whose messages stay (Billing's `CheckKey` answers with `KeyInfo`).

use prost::Message;
use prost_types::FileDescriptorSet;
use tonic::service::Routes;

/// The contract's descriptors with only the services named in `served` (fully qualified,
/// `tollgate.v1.Inference`) left in them.
pub fn contract_serving(served: &[&str]) -> Result<FileDescriptorSet, prost::DecodeError> {
    let mut set = FileDescriptorSet::decode(tollgate::FILE_DESCRIPTOR_SET)?;
    for file in &mut set.file {
        let package = file.package.clone().unwrap_or_default();
        file.service.retain(|service| {
            let name = format!("{package}.{}", service.name());
            served.contains(&name.as_str())
        });
    }
    Ok(set)
}

/// A reflection builder over what a listener serving `served` answers.
fn builder(contract: FileDescriptorSet) -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_file_descriptor_set(contract)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // Each version's server lists both reflection services, since both are served.
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

/// `routes` with reflection v1 and v1alpha added, for a listener serving the contract's services
/// named in `served` (plus health and reflection).
pub fn add_to(routes: Routes, served: &[&str]) -> Result<Routes, ReflectionError> {
    let contract = contract_serving(served)?;
    let v1 = builder(contract.clone()).build_v1()?;
    let v1alpha = builder(contract).build_v1alpha()?;
    Ok(routes.add_service(v1).add_service(v1alpha))
}

/// Reflection could not be built from the descriptors compiled into the binary.
#[derive(Debug, thiserror::Error)]
pub enum ReflectionError {
    #[error("the contract's descriptor set: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error(transparent)]
    Build(#[from] tonic_reflection::server::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(set: &FileDescriptorSet) -> Vec<String> {
        set.file
            .iter()
            .flat_map(|file| {
                file.service
                    .iter()
                    .map(move |s| format!("{}.{}", file.package(), s.name()))
            })
            .collect()
    }

    #[test]
    fn only_the_served_services_stay() {
        let set = contract_serving(&["tollgate.v1.Inference", "tollgate.v1.Billing"])
            .expect("the contract decodes");
        let mut names = services(&set);
        names.sort();
        assert_eq!(names, ["tollgate.v1.Billing", "tollgate.v1.Inference"]);
        // Metering's messages stay: Billing.CheckKey answers with KeyInfo.
        let metering = set
            .file
            .iter()
            .find(|f| f.name() == "tollgate/v1/metering.proto")
            .expect("metering.proto is kept for its messages");
        assert!(metering.message_type.iter().any(|m| m.name() == "KeyInfo"));
        assert!(metering.service.is_empty());
    }

    #[test]
    fn both_reflection_versions_build() {
        add_to(Routes::default(), &["tollgate.v1.Metering"]).expect("reflection builds");
    }
}
