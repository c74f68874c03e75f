#ifndef KMSD_CPKCS11_H
#define KMSD_CPKCS11_H

/* The PKCS#11 v2.40 header shipped by p11-kit (Debian: libp11-kit-dev). It defines the standard CK_* names unless
 * CRYPTOKI_GNU is set, which we never do. */
#include <p11-kit-1/p11-kit/pkcs11.h>

/* CK_GCM_PARAMS as published in the PKCS#11 v2.30 draft and still expected by some HSM firmware: no ulIvBits.
 * The v2.40 layout (with ulIvBits) is CK_GCM_PARAMS from the header above. Which one a token wants is a property of
 * its HSM profile. */
typedef struct CK_GCM_PARAMS_V230 {
    CK_BYTE_PTR pIv;
    CK_ULONG ulIvLen;
    CK_BYTE_PTR pAAD;
    CK_ULONG ulAADLen;
    CK_ULONG ulTagBits;
} CK_GCM_PARAMS_V230;

/* Values Swift cannot import from the header's macros (casts and complements). */
static const CK_ULONG kmsd_CK_UNAVAILABLE_INFORMATION = CK_UNAVAILABLE_INFORMATION;
static const CK_ULONG kmsd_CK_EFFECTIVELY_INFINITE = CK_EFFECTIVELY_INFINITE;
static const CK_ULONG kmsd_CKR_VENDOR_DEFINED = CKR_VENDOR_DEFINED;

#endif
