"""Webhooks on the web app: the providers' feedback (`providers`: SES, SendGrid, Mailgun,
Postmark, with what they share in `core`) and the survey platform's completions
(`completion`)."""
