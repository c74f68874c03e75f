#include "CTLSOptions.h"

// swift-nio-ssl links BoringSSL with every symbol prefixed CNIOBoringSSL_ but does not export its headers as a
// product, so the one function needed is declared here with BoringSSL's signature (include/openssl/ssl.h:
// uint32_t SSL_CTX_set_options(SSL_CTX *ctx, uint32_t options)).
extern uint32_t CNIOBoringSSL_SSL_CTX_set_options(void *ctx, uint32_t options);

#define KMSD_SSL_OP_NO_TICKET 0x00004000u

uint32_t kmsd_ssl_ctx_disable_tickets(void *ssl_ctx) {
    return CNIOBoringSSL_SSL_CTX_set_options(ssl_ctx, KMSD_SSL_OP_NO_TICKET);
}
