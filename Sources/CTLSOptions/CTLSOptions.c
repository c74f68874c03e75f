#include "CTLSOptions.h"

// swift-nio-ssl links BoringSSL with every symbol prefixed CNIOBoringSSL_ but does not export its headers as a
// product, so the functions needed are declared here with BoringSSL's signatures (include/openssl/ssl.h:
// uint32_t SSL_CTX_set_options(SSL_CTX *ctx, uint32_t options);
// int SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, int mode); int SSL_CTX_get_session_cache_mode(const SSL_CTX *ctx)).
extern uint32_t CNIOBoringSSL_SSL_CTX_set_options(void *ctx, uint32_t options);
extern int CNIOBoringSSL_SSL_CTX_set_session_cache_mode(void *ctx, int mode);
extern int CNIOBoringSSL_SSL_CTX_get_session_cache_mode(const void *ctx);

#define KMSD_SSL_OP_NO_TICKET 0x00004000u
#define KMSD_SSL_SESS_CACHE_OFF 0x0000

uint32_t kmsd_ssl_ctx_disable_tickets(void *ssl_ctx) {
    return CNIOBoringSSL_SSL_CTX_set_options(ssl_ctx, KMSD_SSL_OP_NO_TICKET);
}

int kmsd_ssl_ctx_disable_session_cache(void *ssl_ctx) {
    CNIOBoringSSL_SSL_CTX_set_session_cache_mode(ssl_ctx, KMSD_SSL_SESS_CACHE_OFF);
    return CNIOBoringSSL_SSL_CTX_get_session_cache_mode(ssl_ctx);
}
