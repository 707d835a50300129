//! qcow2 v3 images with backing files.
