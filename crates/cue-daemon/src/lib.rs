//! placeholder
pub mod fsio;
pub mod ignore_rules;
pub mod paths;
pub mod scan;
