"""Event sinks (webhooks): operators register HTTP(S) endpoints with an action filter; every matching
Event is POSTed to them, HMAC-signed, retried with backoff and recorded, by the `webhooks` service.

- appliance.webhooks.sinks: create/change/delete sinks (secrets encrypted at rest), deliveries.
- appliance.webhooks.post: the body, the signature and one POST.
- appliance.webhooks.fanout: new events → deliveries, per sink cursor.
- appliance.webhooks.worker: the delivery worker, `serve(settings, db, stop)`.
"""
