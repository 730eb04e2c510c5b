//! Functions: deploy (checked into a [`Spec`] first), list, delete (stopping its instances).

use yr_proto::{DeployReply, DeployRequest, FunctionSpec};

use super::state::MasterState;
use crate::error::{Error, Result};
use crate::etcd;
use crate::function::Spec;
use crate::lifecycle;

impl MasterState {
    /// Registers or updates a function. Errors: [`Error::InvalidArgument`] naming the field,
    /// [`Error::AlreadyExists`] when `create_only` finds the name taken, [`Error::NotFound`]
    /// when `update_only` does not find it.
    pub async fn deploy(&self, req: DeployRequest) -> Result<DeployReply> {
        let spec = req.spec.ok_or_else(|| Error::invalid("spec", "missing"))?;
        let spec = Spec::try_from(spec)?;
        let key = etcd::function_key(&spec.name);
        let _deploying = self.placing.lock().await;
        let old = self.meta.get::<FunctionSpec>(&key).await?;
        let existed = old.is_some();
        if existed && req.create_only {
            return Err(Error::AlreadyExists(format!(
                "the function name {} already exists",
                spec.name
            )));
        }
        if !existed && req.update_only {
            return Err(Error::NotFound(format!(
                "function {:?} is not deployed",
                spec.name
            )));
        }
        let spec = spec.deployed(old.as_ref(), etcd::now_ms());
        self.meta.put(&key, spec.proto()).await?;
        tracing::info!(function = %spec.name, created = !existed, "deployed");
        Ok(DeployReply {
            spec: Some(spec.into_proto()),
            created: !existed,
        })
    }

    /// Stops every live instance of function `name`, then deletes it.
    pub async fn delete_function(&self, name: &str) -> Result<()> {
        self.function(name).await?;
        let ids: Vec<String> = self
            .instances
            .lock()
            .await
            .values()
            .filter(|r| r.function == name && !lifecycle::ended(r))
            .map(|r| r.instance_id.clone())
            .collect();
        for id in ids {
            self.kill_instance(&id).await?;
        }
        self.meta.delete(&etcd::function_key(name)).await
    }

    /// Every deployed function.
    pub async fn functions(&self) -> Result<Vec<FunctionSpec>> {
        self.meta.functions().await
    }
}
