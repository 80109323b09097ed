"""What every server-rendered page shares: the frame (``templates/base.html``) and its one
stylesheet, the templates in every language (:mod:`gateway.pages.templating`), and the message
catalogue of all patient-facing text (:mod:`gateway.pages.i18n`, ``locale/``). The sign-in and
consent pages (:mod:`gateway.oauth`) and the patient's own pages (:mod:`gateway.account`) are
built on it."""
