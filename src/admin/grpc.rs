//! The gRPC admin service: read-only views of the published state.

use tonic::{Request, Response, Status};

use super::proto::{
    self, ListBundlesRequest, ListBundlesResponse, ListStatusesRequest, ListStatusesResponse,
    admin_server::Admin,
};
use crate::pipeline::Published;
use crate::status::StatusTarget;

pub struct AdminService {
    published: Published,
    clients: std::sync::Arc<crate::sds::clients::ClientRegistry>,
    authz: Option<std::sync::Arc<crate::sds::authz::Authz>>,
}

fn delivery(d: &crate::sds::delivery::Delivery) -> proto::Delivery {
    let first = d.first_rejection.clone().unwrap_or_default();
    proto::Delivery {
        version: d.version.to_string(),
        subscribers: d.subscribers as u32,
        acked: d.acked as u32,
        rejected: d.rejected as u32,
        pending: d.pending as u32,
        first_rejection_node: first.node,
        first_rejection_message: first.message,
    }
}

impl AdminService {
    /// With an authorization policy, only clients granted every namespace (`'*'`) may use
    /// the admin API: it lists every tenant's bundles.
    pub fn new(
        published: Published,
        clients: std::sync::Arc<crate::sds::clients::ClientRegistry>,
        authz: Option<std::sync::Arc<crate::sds::authz::Authz>>,
    ) -> Self {
        Self {
            published,
            clients,
            authz,
        }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match &self.authz {
            Some(authz) => authz
                .check(&crate::sds::service::peer_identities(request), &[], true)
                .map_err(|why| Status::permission_denied(format!("admin API: {why}"))),
            None => Ok(()),
        }
    }

    pub fn into_server(self) -> proto::admin_server::AdminServer<Self> {
        proto::admin_server::AdminServer::new(self)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_bundles(
        &self,
        request: Request<ListBundlesRequest>,
    ) -> Result<Response<ListBundlesResponse>, Status> {
        self.authorize(&request)?;
        let snapshot = self.published.snapshot.borrow().clone();
        let deliveries = super::deliveries(&self.clients, &snapshot);
        let bundles = snapshot
            .resources
            .iter()
            .map(|(name, bundle)| proto::Bundle {
                name: name.to_string(),
                version: bundle.version().to_owned(),
                certificates: bundle
                    .certificates()
                    .map(|c| proto::Certificate {
                        subject: c.subject.clone(),
                        display_name: c.display_name.clone(),
                        sha256: c.sha256.clone(),
                        not_before: c.not_before,
                        not_after: c.not_after,
                    })
                    .collect(),
                delivery: deliveries.get(name).map(delivery),
            })
            .collect();
        Ok(Response::new(ListBundlesResponse { bundles }))
    }

    async fn list_statuses(
        &self,
        request: Request<ListStatusesRequest>,
    ) -> Result<Response<ListStatusesResponse>, Status> {
        self.authorize(&request)?;
        let statuses = self.published.statuses.borrow().clone();
        let health = self.published.health.borrow().clone();
        let snapshot = self.published.snapshot.borrow().clone();
        let deliveries = super::deliveries(&self.clients, &snapshot);
        let statuses = statuses
            .iter()
            .map(|(target, c)| {
                let (kind, key) = match target {
                    StatusTarget::Registration(k) => ("MCPServerRegistration", k),
                    StatusTarget::Extension(k) => ("MCPGatewayExtension", k),
                };
                proto::ObjectStatus {
                    kind: kind.to_owned(),
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                    ready: c.ready,
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    observed_generation: c.observed_generation.unwrap_or_default(),
                    delivery: deliveries
                        .get(target.resource_name().to_string().as_str())
                        .map(delivery),
                }
            })
            .collect();
        let source = proto::SourceHealth {
            synced: health.synced,
            error: health.error.clone().unwrap_or_default(),
            skipped: health.skipped.clone().into_iter().collect(),
        };
        let upstreams = self
            .published
            .upstreams
            .borrow()
            .iter()
            .map(|(target, c)| proto::UpstreamStatus {
                namespace: target.key().namespace.clone(),
                name: target.key().name.clone(),
                status: c.status_str().to_owned(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
            .collect();
        Ok(Response::new(ListStatusesResponse {
            statuses,
            source: Some(source),
            upstreams,
        }))
    }
}
