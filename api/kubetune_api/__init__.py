"""The kubetune API: the FineTuneJob resource's types (`kubetune_api.v1alpha1`), shared by the
operator, the trainer and the SDK, and the build tool that renders the CRD and docs from them
(`kubetune_api.build`)."""
