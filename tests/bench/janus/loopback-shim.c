/*
 * LD_PRELOAD shim for the benchmark's Janus only.
 *
 * Janus (src/ice.c) skips every interface flagged IFF_LOOPBACK when it picks the addresses
 * to gather ICE candidates on, so out of the box it cannot do media on 127.0.0.1 and
 * falls back to the machine's real interfaces. The benchmark must stay on 127.0.0.1 (and
 * wardlink is measured there), so this shim clears the loopback flag in getifaddrs()
 * results for the Janus process alone; janus.jcfg then enforces 127.0.0.1 as the only
 * ICE address. Nothing on the machine's network configuration changes.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stddef.h>

int getifaddrs(struct ifaddrs **ifap) {
	static int (*real_getifaddrs)(struct ifaddrs **) = NULL;
	if (real_getifaddrs == NULL)
		real_getifaddrs = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
	if (real_getifaddrs == NULL)
		return -1;
	int rc = real_getifaddrs(ifap);
	if (rc == 0) {
		for (struct ifaddrs *i = *ifap; i != NULL; i = i->ifa_next)
			i->ifa_flags &= ~IFF_LOOPBACK;
	}
	return rc;
}
