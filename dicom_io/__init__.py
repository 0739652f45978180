"""pacsai dicom_io package."""
