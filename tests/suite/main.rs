//! Integration tests: respite in-process in front of a real redis-server.

mod harness;

mod admin;
mod audit;
mod auth;
mod cluster;
mod config;
mod deploy;
mod differential;
mod exactly;
mod hostile;
mod isolation;
mod multiplex;
mod neighbours;
mod properties;
mod protocol;
mod pubsub;
mod queues;
mod quota;
mod scripts;
mod secret_files;
mod shared;
mod stress;
mod tenants;
mod tls;
mod upstream;
