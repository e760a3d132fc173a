//! [`Client`]: one set of connections and one metadata cache, shared by the producers,
//! consumers and admin clients made from it.

use std::sync::Arc;

use crate::admin::Admin;
use crate::cluster::Cluster;
use crate::config::{ClientConfig, ConsumerConfig, ProducerConfig};
use crate::consumer::Consumer;
use crate::error::Result;
use crate::producer::Producer;

/// A connection to a Weir cluster. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    cluster: Arc<Cluster>,
}

impl Client {
    /// Checks the configuration. Connections are made when the first request needs them.
    pub fn new(config: ClientConfig) -> Result<Self> {
        Ok(Self {
            cluster: Cluster::new(config)?,
        })
    }

    pub fn config(&self) -> &ClientConfig {
        self.cluster.config()
    }

    pub fn producer(&self, config: ProducerConfig) -> Result<Producer> {
        Producer::with_cluster(self.cluster.clone(), config)
    }

    pub fn consumer(&self, config: ConsumerConfig) -> Consumer {
        Consumer::with_cluster(self.cluster.clone(), config)
    }

    pub fn admin(&self) -> Admin {
        Admin::with_cluster(self.cluster.clone())
    }

    /// The partition count of a topic, from cached metadata (fetched if missing).
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        self.cluster.partition_count(topic).await
    }
}
