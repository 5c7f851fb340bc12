//! Tests of the whole pipeline, by format and concern.

mod capacity;
mod conf;
mod disjoint;
mod dynamic;
mod emit;
mod metrics_listen;
mod one_time;
mod spa;
mod steps;
mod support;
mod validate;
mod yaml;
