//! The cosnap virtualization host: virtual systems with their settings and resource
//! settings, collections, collection snapshots, reference points and jobs, kept in an
//! embedded SQLite repository, and the Hyper-V services' methods with their documented
//! return codes.
