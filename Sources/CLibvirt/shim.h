// CLibvirt: libvirt (Debian: libvirt-dev) for Swift.
#ifndef CLIBVIRT_SHIM_H
#define CLIBVIRT_SHIM_H
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#endif
