// CRabbitMQ: rabbitmq-c 0.11 (Debian: librabbitmq-dev) for Swift.
//
// Swift cannot call C variadic functions, so the SASL login (amqp_login and
// amqp_login_with_properties take the credentials as varargs) is wrapped in a
// static inline function here. Shim functions are prefixed `CRabbitMQ_`, the
// swift-nio convention for C shims.
#ifndef CRABBITMQ_SHIM_H
#define CRABBITMQ_SHIM_H
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <amqp_framing.h>

/// `amqp_login_with_properties` with SASL PLAIN: `user` and `password` are the
/// variadic arguments rabbitmq-c expects for AMQP_SASL_METHOD_PLAIN.
/// `client_properties` is merged over rabbitmq-c's defaults (capabilities are
/// merged key by key).
static inline amqp_rpc_reply_t CRabbitMQ_login_plain(
    amqp_connection_state_t state, char const *vhost, int channel_max,
    int frame_max, int heartbeat, const amqp_table_t *client_properties,
    char const *user, char const *password) {
  return amqp_login_with_properties(state, vhost, channel_max, frame_max,
                                    heartbeat, client_properties,
                                    AMQP_SASL_METHOD_PLAIN, user, password);
}

#endif
