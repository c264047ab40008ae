//! Block backends on io_uring, scatter-gather DMA over guest RAM, bounce fallback, cancel
//! and QEMU's rerror/werror policy.
