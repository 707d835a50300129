//! `CimProvider` for [`Host`] (method dispatch and association walking).
