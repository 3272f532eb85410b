//! Transfer and dataset analyses, one file per paper.
