// CLibvirt: libvirt (Debian: libvirt-dev) for Swift.
//
// Swift cannot use C function-like macros; the `CLibvirt_` functions below turn the ones the
// Swift wrapper needs into real functions (the swift-nio `CNIOLinux_` convention).
#ifndef CLIBVIRT_SHIM_H
#define CLIBVIRT_SHIM_H
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

/// `VIR_DOMAIN_EVENT_CALLBACK(cb)` for a lifecycle callback: casts it to the generic callback type
/// that `virConnectDomainEventRegisterAny` takes (with `VIR_DOMAIN_EVENT_ID_LIFECYCLE`).
static inline virConnectDomainEventGenericCallback
CLibvirt_VIR_DOMAIN_EVENT_CALLBACK(virConnectDomainEventCallback cb) {
    return VIR_DOMAIN_EVENT_CALLBACK(cb);
}

#ifdef __linux__
#include <pthread.h>
/// Names the calling thread (shown by top, gdb, /proc/PID/task/TID/comm). glibc declares
/// pthread_setname_np only under _GNU_SOURCE, which the Glibc module is built without.
extern int pthread_setname_np(pthread_t thread, const char *name);
static inline int CLibvirt_setCurrentThreadName(const char *name) {
    return pthread_setname_np(pthread_self(), name);
}
#else
static inline int CLibvirt_setCurrentThreadName(const char *name) { (void)name; return 0; }
#endif

#endif
