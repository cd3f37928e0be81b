//! poolbill's benchmark: seeded region-like workloads, each figure measured as a child process
//! (wall time and peak memory from the kernel) next to a baseline measured in the same run, and
//! a report as a Markdown table and as JSON. See the README's "Performance" section.

pub mod http_load;
pub mod measure;
pub mod report;
pub mod suite;
pub mod work;
pub mod workload;
