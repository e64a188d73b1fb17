"""Out-of-band control: one BMC driver interface (base), IPMI and Redfish drivers, probing, encrypted
credentials, parallel power operations and the power-state poller."""
