//! Integration tests over real sockets: a real server on 127.0.0.1:0 with a
//! temp data dir, real SDK clients, and the real `duet` binary.

mod bad_input;
mod cli;
mod cluster;
mod cluster_proc;
mod crash;
mod delivery;
mod history;
mod recall;
mod retention;
mod serve_proc;
mod sessions;
