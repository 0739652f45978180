"""Receiving: the DICOM SCP, its upper layer and front door, the spool, durable writes, recovery, the study tracker."""
