// CRabbitMQ: rabbitmq-c 0.11 (Debian: librabbitmq-dev) for Swift.
#ifndef CRABBITMQ_SHIM_H
#define CRABBITMQ_SHIM_H
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <amqp_framing.h>
#endif
