"""The turn pipeline on top of the models: profile, factory, engine and sessions."""
