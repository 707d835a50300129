//! Raw images, with allocation from SEEK_DATA/SEEK_HOLE.
