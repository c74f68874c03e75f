#ifndef KMSD_CTLSOPTIONS_H
#define KMSD_CTLSOPTIONS_H

#include <stdint.h>

/// Sets SSL_OP_NO_TICKET on a swift-nio-ssl context's SSL_CTX: the server issues no TLS session tickets (in TLS 1.3
/// BoringSSL then sends no NewSessionTicket), so every connection does a full handshake with certificate checks.
/// Returns the context's options afterwards.
uint32_t kmsd_ssl_ctx_disable_tickets(void *ssl_ctx);

/// Turns the server's session cache off (SSL_SESS_CACHE_OFF): no TLS 1.2 resumption by session ID either. Returns
/// the cache mode afterwards (0 when off).
int kmsd_ssl_ctx_disable_session_cache(void *ssl_ctx);

#endif
