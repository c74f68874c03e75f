/* CPKCS11 is header-only; this file gives SwiftPM a C source to compile. */
