"""Images, labels and class protocols: datasets on disk and the embedded ToyCity benchmark."""
