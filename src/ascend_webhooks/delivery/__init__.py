"""The sender's delivery side: SSRF guard, HTTP transport, retry policy and the worker loop.

* :mod:`.ssrf`: which endpoint URLs and addresses may be targets (registration and connect time);
* :mod:`.transport`: one attempt's POST over pyreqwest, classified into a status or an error;
* :mod:`.retry`: after an attempt, succeeded / retry at / failed;
* :mod:`.worker`: claims due deliveries from the store, signs, sends, records in batches.

Submodules are imported explicitly (``from ascend_webhooks.delivery.ssrf import ...``), so that
importing the SSRF guard does not load the HTTP client.
"""
