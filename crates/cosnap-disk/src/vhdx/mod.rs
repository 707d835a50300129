//! VHDX (MS-VHDX) images: dynamic, fixed and differencing (`.avhdx`), with log replay.
