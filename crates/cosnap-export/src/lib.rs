//! Export packages: the on-disk layout, the OVF descriptor, the manifest, full and
//! differential exports of a snapshot collection, verification and import.
