//! The master's gRPC surface: each call unwraps its request, asks [`MasterState`], and sends
//! errors as statuses that carry their kind ([`crate::error::Error::to_status`]).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use yr_proto::master_server::Master;
use yr_proto::*;

use super::state::MasterState;

/// The gRPC service over the master's state.
pub(super) struct Service(pub(super) Arc<MasterState>);

#[tonic::async_trait]
impl Master for Service {
    async fn deploy(&self, req: Request<DeployRequest>) -> Result<Response<DeployReply>, Status> {
        Ok(Response::new(self.0.deploy(req.into_inner()).await?))
    }

    async fn delete_function(&self, req: Request<FunctionRef>) -> Result<Response<Empty>, Status> {
        self.0.delete_function(&req.into_inner().name).await?;
        Ok(Response::new(Empty {}))
    }

    async fn list_functions(&self, _: Request<Empty>) -> Result<Response<FunctionList>, Status> {
        Ok(Response::new(FunctionList {
            functions: self.0.functions().await?,
        }))
    }

    async fn create_instance(
        &self,
        req: Request<CreateInstanceRequest>,
    ) -> Result<Response<InstanceReply>, Status> {
        let r = self.0.create_instance(req.into_inner()).await?;
        Ok(Response::new(InstanceReply { instance: Some(r) }))
    }

    async fn kill_instance(&self, req: Request<InstanceRef>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let key = if r.instance_id.is_empty() {
            r.name
        } else {
            r.instance_id
        };
        self.0.kill_instance(&key).await?;
        Ok(Response::new(Empty {}))
    }

    async fn status(&self, _: Request<Empty>) -> Result<Response<ClusterStatus>, Status> {
        Ok(Response::new(self.0.status().await?))
    }

    async fn report_instance(
        &self,
        req: Request<InstanceEvent>,
    ) -> Result<Response<Empty>, Status> {
        self.0.report(req.into_inner()).await?;
        Ok(Response::new(Empty {}))
    }

    async fn info(&self, _: Request<Empty>) -> Result<Response<ClusterInfo>, Status> {
        Ok(Response::new(self.0.info().await))
    }
}

/// `Join`: signs a joining node's certificate for a caller that shows the join token. The one
/// service a client without a certificate reaches.
pub(super) struct JoinService {
    pub(super) authority: Option<super::JoinAuthority>,
    pub(super) etcd_endpoints: Vec<String>,
    /// Asked for the etcd members at each join, so that a node joins knowing every member
    /// (standby masters' too), not only those this master was started with.
    pub(super) meta: crate::etcd::Meta,
}

#[tonic::async_trait]
impl yr_proto::join_server::Join for JoinService {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let Some(a) = &self.authority else {
            return Err(Status::failed_precondition(
                "this master was started without a cluster CA and signs no certificates",
            ));
        };
        let r = req.into_inner();
        if !a.token.secret_matches(&r.token) {
            tracing::warn!("a Join with a wrong token was refused");
            return Err(Status::unauthenticated(
                "the join token is wrong: `yr token --join` on the master prints the right one",
            ));
        }
        let cert_pem = crate::pki::sign_request(&a.ca_pem, &a.ca_key_pem, &r.csr_pem)?;
        Ok(Response::new(JoinReply {
            cert_pem,
            ca_pem: a.ca_pem.clone(),
            etcd_endpoints: {
                let mut all = self.etcd_endpoints.clone();
                for u in self.meta.member_urls().await.unwrap_or_default() {
                    if !all.contains(&u) {
                        all.push(u);
                    }
                }
                all
            },
            cluster_secret: a.cluster_secret.clone(),
            // A standby master becomes the cluster's admitting master after a failover: it
            // needs the CA's key and the token. This gives a token holder no more than the
            // token already does (it admits members, and members may do anything), and the
            // reply travels over TLS to a node that proved the token's secret.
            ca_key_pem: if r.standby_master {
                a.ca_key_pem.clone()
            } else {
                String::new()
            },
            join_token: if r.standby_master {
                a.token.to_string()
            } else {
                String::new()
            },
            rest_token: match (&a.rest_token, r.standby_master) {
                (Some(t), true) => t.clone(),
                _ => String::new(),
            },
        }))
    }
}
